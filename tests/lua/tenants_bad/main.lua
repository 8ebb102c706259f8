-- Main script of the invalid-tenants fixture.
function on_subscribe() return true end
