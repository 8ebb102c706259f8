// A module resolve hook: bare imports of files outside tests/js (the React
// example under examples/react) fall back to tests/js/node_modules.
const base = new URL('../package.json', import.meta.url).href;

export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (e) {
    const bare = !/^(\.|\/|[a-z]+:)/.test(specifier);
    if (!bare || e.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    return next(specifier, { ...context, parentURL: base });
  }
}
