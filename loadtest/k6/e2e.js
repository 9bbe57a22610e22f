// End to end: SubmitTask on the gateway, then WatchTask on the reader until the task is terminal,
// at a constant arrival rate.
//
//   k6 run -e API_KEY=... -e RATE=200 -e DURATION=60s loadtest/k6/e2e.js
//
// Measures what a client waits for a task to finish: Kafka, the processor's handler, the MySQL
// upsert, the events topic and the reader's watch. `dispatch_e2e_duration` (submit start to the
// terminal event) has its own p95/p99 thresholds (E2E_P95_MS / E2E_P99_MS), and
// `dispatch_e2e_succeeded` (the task ended SUCCEEDED, not DEAD, CANCELLED or without a terminal
// event) must stay above CHECK_RATE: a task type without a handler fails it at once.

import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Rate, Trend } from 'k6/metrics';
import {
  loadGatewayAndReader, invoke, isOk, field, envNum, envStr, taskSpec, callParams, ensureConnected,
  arrivalScenario, buildThresholds, latencyLimits, SUBMIT_LIMITS, E2E_LIMITS, TERMINAL_STATES,
  summaryTrendStats, RPC,
} from './lib/common.js';

const { gateway, reader } = loadGatewayAndReader();

// How long one watch may take before it counts as a failure.
const WATCH_TIMEOUT = envStr('E2E_WATCH_TIMEOUT', '30s');

const e2eDuration = new Trend('dispatch_e2e_duration', true);
const e2eSucceeded = new Rate('dispatch_e2e_succeeded');

const submitLimits = latencyLimits('SUBMIT', SUBMIT_LIMITS.p95, SUBMIT_LIMITS.p99);
const e2eLimits = latencyLimits('E2E', E2E_LIMITS.p95, E2E_LIMITS.p99);
const checkRate = envNum('CHECK_RATE', 0.99, 0);

const thresholds = buildThresholds([{ scenario: 'e2e', p95: submitLimits.p95, p99: submitLimits.p99 }]);
thresholds['dispatch_e2e_duration{scenario:e2e}'] = [`p(95)<${e2eLimits.p95}`, `p(99)<${e2eLimits.p99}`];
thresholds['dispatch_e2e_succeeded{scenario:e2e}'] = [`rate>${checkRate}`];

export const options = {
  scenarios: {
    e2e: arrivalScenario({ exec: 'e2e' }),
  },
  thresholds,
  summaryTrendStats,
};

export function e2e() {
  const started = Date.now();
  const res = invoke(gateway, RPC.SubmitTask, { task: taskSpec() });
  const id = isOk(res) ? field(res.message, 'taskId', 'task_id') : undefined;
  const submitted = check(res, {
    'SubmitTask status is OK': (r) => isOk(r),
    'SubmitTask returned a task id': () => !!id,
  });
  if (!submitted) {
    e2eSucceeded.add(false);
    return;
  }
  const version = field(res.message, 'version', 'version');

  ensureConnected(reader);
  const params = callParams();
  params.timeout = WATCH_TIMEOUT;
  const stream = new grpc.Stream(reader.client, RPC.WatchTask, params);
  let last;
  let done = false;
  const finish = (how) => {
    if (done) return;
    done = true;
    const terminal = last !== undefined && TERMINAL_STATES.indexOf(last) >= 0;
    if (terminal) e2eDuration.add(Date.now() - started);
    e2eSucceeded.add(last === 'TASK_STATE_SUCCEEDED');
    check(last, {
      'WatchTask reached a terminal state': () => terminal,
      'task SUCCEEDED (its type has a handler)': (s) => s === 'TASK_STATE_SUCCEEDED',
    });
    if (how !== 'end' && !terminal) console.warn(`WatchTask(${id}) ${how} before a terminal state (last ${last})`);
  };
  stream.on('data', (ev) => {
    if (field(ev, 'taskId', 'task_id') !== id) return;
    last = field(ev, 'state', 'state');
    if (TERMINAL_STATES.indexOf(last) >= 0) finish('terminal');
  });
  stream.on('error', (e) => finish(`failed (${e && e.message ? e.message : e})`));
  stream.on('end', () => finish('end'));
  stream.write({ task_id: id, min_version: version === undefined ? '0' : String(version) });
  stream.end();
}

export default e2e;
