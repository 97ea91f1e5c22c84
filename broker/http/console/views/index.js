// The console's views, in the navigation's order. A view is a file of its
// own: { name, title, path (a RegExp on the hash), nav (its link, if any),
// needs(ctx) (who sees it), render(root, {match, params}, ctx) → stop() }.

import overview from './overview.js';
import nodes from './nodes.js';
import jobs from './jobs.js';
import job from './job.js';
import deadLetters from './dead_letters.js';
import runs from './runs.js';
import run from './run.js';
import models from './models.js';
import usage from './usage.js';
import tenants from './tenants.js';

export default [overview, nodes, jobs, job, runs, run, deadLetters, models, usage, tenants];
