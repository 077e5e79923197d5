// Loads the page modules in parallel and starts the shell with their routes. A page module
// that fails to load (missing from an older install, a syntax error) costs only its own
// pages: the others still work, and its routes show "Not found".
import { start } from './app.js';

const MODULES = ['./prompts.js', './audit.js', './fleet.js', './rollout.js', './shadow.js'];

async function load(name) {
  try {
    const module = await import(name);
    return Array.isArray(module.routes) ? module.routes : [];
  } catch (err) {
    console.warn(`console: ${name} did not load: ${err.message}`);
    return [];
  }
}

start(Promise.all(MODULES.map(load)).then((lists) => lists.flat()));
