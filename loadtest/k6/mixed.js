// Mixed workload: every client RPC but WatchTask (see e2e.js), each as its own
// constant-arrival-rate scenario running concurrently:
//   submit     SubmitTask on the gateway                                 SUBMIT_SHARE    (0.2)
//   cancel     SubmitTask with run_at CANCEL_RUN_AT_S ahead, then CancelTask  CANCEL_SHARE (0.02)
//   list       ListTasks by a random business key, LIST_PAGE_SIZE per page  LIST_SHARE    (0.05)
//   batch_get  BatchGetTasks of BATCH_GET_SIZE ids from the hot set       BATCH_GET_SHARE (0.05)
//   get        GetTask of one hot-set id                                  the rest
//
//   k6 run -e API_KEY=... -e RATE=5000 -e DURATION=120s loadtest/k6/mixed.js
//
// RATE is the total, split by the shares; PRE_VUS / MAX_VUS are split the same way. Latency
// thresholds are per scenario (SUBMIT_* for submit and cancel, GET_* for get, batch_get and
// list). Reads target a hot set created in setup(), so this measures read latency while the
// write path is under load.

import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  cfg, loadGatewayAndReader, hotSetSetup, getHotTask, invoke, isOk, field, envInt, envNum, taskSpec, businessKey,
  arrivalScenario, buildThresholds, latencyLimits, SUBMIT_LIMITS, GET_LIMITS, SETUP_TIMEOUT_S,
  summaryTrendStats, RPC,
} from './lib/common.js';

const SHARES = {
  submit: envNum('SUBMIT_SHARE', 0.2, 0),
  cancel: envNum('CANCEL_SHARE', 0.02, 0),
  list: envNum('LIST_SHARE', 0.05, 0),
  batch_get: envNum('BATCH_GET_SHARE', 0.05, 0),
};
const otherShares = Object.values(SHARES).reduce((a, b) => a + b, 0);
for (const [name, share] of Object.entries(SHARES)) {
  if (!(share > 0 && share < 1)) {
    throw new Error(`${name.toUpperCase()}_SHARE must be strictly between 0 and 1, got ${share}`);
  }
}
if (!(otherShares < 1)) {
  throw new Error(`SUBMIT_SHARE + CANCEL_SHARE + LIST_SHARE + BATCH_GET_SHARE must be < 1 (get takes the rest), got ${otherShares}`);
}

// ListTasksRequest.page_size: 1..=500.
const LIST_PAGE_SIZE = envInt('LIST_PAGE_SIZE', 20, 1);
if (LIST_PAGE_SIZE > 500) throw new Error(`LIST_PAGE_SIZE must be <= 500, got ${LIST_PAGE_SIZE}`);
// BatchGetTasksRequest.task_ids: 1..=100 (and at most HOT_SET distinct ids are available).
const BATCH_GET_SIZE = envInt('BATCH_GET_SIZE', 20, 1);
if (BATCH_GET_SIZE > 100) throw new Error(`BATCH_GET_SIZE must be <= 100, got ${BATCH_GET_SIZE}`);
// How far ahead the cancel scenario schedules the task it then cancels (so it is still queued).
const CANCEL_RUN_AT_S = envInt('CANCEL_RUN_AT_S', 600, 1);

// Each scenario gets its share of `total` (at least 1); get takes what is left.
function split(total) {
  const out = {};
  let used = 0;
  for (const [name, share] of Object.entries(SHARES)) {
    out[name] = Math.max(1, Math.round(total * share));
    used += out[name];
  }
  out.get = Math.max(1, total - used);
  return out;
}

const rates = split(cfg.rate);
const pres = split(cfg.preVUs);
const maxes = split(cfg.maxVUs);

const { gateway, reader } = loadGatewayAndReader();

const submitLimits = latencyLimits('SUBMIT', SUBMIT_LIMITS.p95, SUBMIT_LIMITS.p99);
const getLimits = latencyLimits('GET', GET_LIMITS.p95, GET_LIMITS.p99);

const EXEC = { submit: 'submit', cancel: 'cancel', list: 'list', batch_get: 'batchGet', get: 'get' };
const scenarios = {};
for (const [name, exec] of Object.entries(EXEC)) {
  scenarios[name] = arrivalScenario({
    exec, rate: rates[name], preVUs: pres[name], maxVUs: Math.max(pres[name], maxes[name]),
  });
}

const cancelsNotAccepted = new Counter('dispatch_cancel_not_accepted');

export const options = {
  scenarios,
  thresholds: buildThresholds([
    { scenario: 'submit', p95: submitLimits.p95, p99: submitLimits.p99 },
    { scenario: 'cancel', p95: submitLimits.p95, p99: submitLimits.p99 },
    { scenario: 'get', p95: getLimits.p95, p99: getLimits.p99 },
    { scenario: 'batch_get', p95: getLimits.p95, p99: getLimits.p99 },
    { scenario: 'list', p95: getLimits.p95, p99: getLimits.p99 },
  ]),
  setupTimeout: `${SETUP_TIMEOUT_S + 60}s`,
  summaryTrendStats,
};

export function setup() {
  return hotSetSetup(gateway, reader, sleep);
}

export function submit() {
  const res = invoke(gateway, RPC.SubmitTask, { task: taskSpec() });
  check(res, {
    'SubmitTask status is OK': (r) => isOk(r),
    'SubmitTask returned a task id': (r) => isOk(r) && !!field(r.message, 'taskId', 'task_id'),
  });
}

export function get(data) {
  getHotTask(reader, data.ids);
}

// Schedules a task CANCEL_RUN_AT_S ahead, then cancels it while it waits (routed by its
// business key, so the cancel works before the task is stored).
export function cancel() {
  const spec = taskSpec();
  spec.run_at = new Date(Date.now() + CANCEL_RUN_AT_S * 1000).toISOString();
  const sub = invoke(gateway, RPC.SubmitTask, { task: spec });
  const id = isOk(sub) ? field(sub.message, 'taskId', 'task_id') : undefined;
  if (!check(sub, { 'SubmitTask (to cancel) status is OK': (r) => isOk(r) && !!id })) return;
  const res = invoke(gateway, RPC.CancelTask, { task_id: id, business_key: spec.business_key, reason: 'k6 mixed.js' });
  check(res, {
    'CancelTask status is OK': (r) => isOk(r),
    'CancelTask answered for the task': (r) => isOk(r) && field(r.message, 'taskId', 'task_id') === id,
  });
  if (isOk(res) && field(res.message, 'accepted', 'accepted') !== true) cancelsNotAccepted.add(1);
}

export function list() {
  const res = invoke(reader, RPC.ListTasks, { business_key: businessKey(), page_size: LIST_PAGE_SIZE });
  check(res, {
    'ListTasks status is OK': (r) => isOk(r),
    'ListTasks returned at most a page': (r) => isOk(r) && (field(r.message, 'tasks', 'tasks') || []).length <= LIST_PAGE_SIZE,
  });
}

export function batchGet(data) {
  // Distinct ids: a partial Fisher-Yates shuffle of a copy of the hot set.
  const pool = data.ids.slice();
  const n = Math.min(BATCH_GET_SIZE, pool.length);
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(Math.random() * (pool.length - i));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  const ids = pool.slice(0, n);
  const res = invoke(reader, RPC.BatchGetTasks, { task_ids: ids });
  const tasks = isOk(res) ? field(res.message, 'tasks', 'tasks') || [] : [];
  const got = new Set(tasks.map((t) => field(t, 'taskId', 'task_id')));
  check(res, {
    'BatchGetTasks status is OK': (r) => isOk(r),
    'BatchGetTasks returned every requested task': () => ids.every((id) => got.has(id)),
  });
}
