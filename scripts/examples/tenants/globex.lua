-- tenants/globex.lua: the rules of tenant "globex": its own topics only, no
-- connection limit, no transform. See tenants/acme.lua for every key.
return {
  topics = { "globex:*" },
}
