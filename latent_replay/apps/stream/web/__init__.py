"""The stream demo over HTTP: the live view and the command API for a browser (`stream --serve`)."""
