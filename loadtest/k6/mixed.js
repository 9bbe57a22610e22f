// Mixed workload: 20% SubmitTask on the gateway, 80% GetTask on the reader, each as its own
// constant-arrival-rate scenario running concurrently.
//
//   k6 run -e API_KEY=... -e RATE=5000 -e DURATION=120s loadtest/k6/mixed.js
//
// RATE is the total; SUBMIT_SHARE (default 0.2) of it goes to submit, the rest to get.
// PRE_VUS / MAX_VUS are split the same way. Latency thresholds are per scenario
// (SUBMIT_P95_MS/SUBMIT_P99_MS and GET_P95_MS/GET_P99_MS). Reads target a hot set created in
// setup(), so this measures read latency while the write path is under load.

import grpc from 'k6/net/grpc';
import { check, sleep } from 'k6';
import {
  cfg, conn, closeConn, invoke, isOk, field, envNum, taskSpec, createHotSet, arrivalScenario,
  buildThresholds, latencyLimits, SUBMIT_LIMITS, GET_LIMITS, SETUP_TIMEOUT_S, summaryTrendStats,
  GATEWAY_PROTO, QUERY_PROTO, RPC,
} from './lib/common.js';

const SUBMIT_SHARE = envNum('SUBMIT_SHARE', 0.2, 0);
if (!(SUBMIT_SHARE > 0 && SUBMIT_SHARE < 1)) {
  throw new Error(`SUBMIT_SHARE must be strictly between 0 and 1, got ${SUBMIT_SHARE}`);
}

function split(total) {
  const a = Math.max(1, Math.round(total * SUBMIT_SHARE));
  const b = Math.max(1, total - a);
  return [a, b];
}

const [submitRate, getRate] = split(cfg.rate);
const [submitPre, getPre] = split(cfg.preVUs);
const [submitMax, getMax] = split(cfg.maxVUs);

const gatewayClient = new grpc.Client();
gatewayClient.load([cfg.protoDir], GATEWAY_PROTO);
const readerClient = new grpc.Client();
readerClient.load([cfg.protoDir], QUERY_PROTO);

const gateway = conn(gatewayClient, cfg.gatewayAddr);
const reader = conn(readerClient, cfg.readerAddr);

const submitLimits = latencyLimits('SUBMIT', SUBMIT_LIMITS.p95, SUBMIT_LIMITS.p99);
const getLimits = latencyLimits('GET', GET_LIMITS.p95, GET_LIMITS.p99);

export const options = {
  scenarios: {
    submit: arrivalScenario({
      exec: 'submit', rate: submitRate, preVUs: submitPre, maxVUs: Math.max(submitPre, submitMax),
    }),
    get: arrivalScenario({
      exec: 'get', rate: getRate, preVUs: getPre, maxVUs: Math.max(getPre, getMax),
    }),
  },
  thresholds: buildThresholds([
    { scenario: 'submit', p95: submitLimits.p95, p99: submitLimits.p99 },
    { scenario: 'get', p95: getLimits.p95, p99: getLimits.p99 },
  ]),
  setupTimeout: `${SETUP_TIMEOUT_S + 60}s`,
  summaryTrendStats,
};

export function setup() {
  const ids = createHotSet(gateway, reader, sleep);
  closeConn(gateway);
  closeConn(reader);
  return { ids };
}

export function submit() {
  const res = invoke(gateway, RPC.SubmitTask, { task: taskSpec() });
  check(res, {
    'SubmitTask status is OK': (r) => isOk(r),
    'SubmitTask returned a task id': (r) => isOk(r) && !!field(r.message, 'taskId', 'task_id'),
  });
}

export function get(data) {
  const id = data.ids[Math.floor(Math.random() * data.ids.length)];
  const res = invoke(reader, RPC.GetTask, { task_id: id });
  const task = isOk(res) ? field(res.message, 'task', 'task') : undefined;
  check(res, {
    'GetTask status is OK': (r) => isOk(r),
    'GetTask returned the requested task': () => !!task && field(task, 'taskId', 'task_id') === id,
  });
}
