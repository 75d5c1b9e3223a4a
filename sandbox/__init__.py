"""Local stand-ins for Cordial, an OpenSSH SFTP server and Lytics (see docs/design.md)."""
