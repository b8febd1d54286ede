"""Pure modules (media, formats, config...): no server, no database, no sockets; `make unit` runs these in seconds."""
