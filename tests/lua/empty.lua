-- No hooks at all: everything is allowed and passed through unchanged.
local unused = 1
