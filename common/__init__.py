"""What every part may import: the system's settings and state folder, child processes, files."""
