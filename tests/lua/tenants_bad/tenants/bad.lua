-- Invalid: max_connections must be an integer >= 0.
return {max_connections = -1}
