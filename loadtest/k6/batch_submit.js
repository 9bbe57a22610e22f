// SubmitTasks (batch) throughput/latency at a constant arrival rate.
//
//   k6 run -e API_KEY=... -e RATE=50 -e BATCH=100 -e DURATION=60s loadtest/k6/batch_submit.js
//
// RATE is batches per TIME_UNIT, so tasks/s = RATE * BATCH. Measures the latency of a whole
// batch RPC and counts per-item acceptance (one bad item does not fail the others).

import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import {
  cfg, conn, invoke, isOk, field, envInt, taskSpec, arrivalScenario, buildThresholds,
  latencyLimits, SUBMIT_LIMITS, summaryTrendStats, GATEWAY_PROTO, RPC, MAX_BATCH,
} from './lib/common.js';

const BATCH = envInt('BATCH', 100, 1);
if (BATCH > MAX_BATCH) {
  throw new Error(`BATCH must be <= ${MAX_BATCH} (SubmitTasks limit), got ${BATCH}`);
}

const gatewayClient = new grpc.Client();
gatewayClient.load([cfg.protoDir], GATEWAY_PROTO);

const gateway = conn(gatewayClient, cfg.gatewayAddr);

const itemsAccepted = new Counter('dispatch_batch_items_accepted');
const itemsRejected = new Counter('dispatch_batch_items_rejected');
const itemAcceptRate = new Rate('dispatch_batch_item_accept_rate');

const limits = latencyLimits('BATCH', SUBMIT_LIMITS.p95, SUBMIT_LIMITS.p99);

const thresholds = buildThresholds([{ scenario: 'batch_submit', p95: limits.p95, p99: limits.p99 }]);
thresholds.dispatch_batch_item_accept_rate = ['rate>0.99'];

export const options = {
  scenarios: {
    batch_submit: arrivalScenario({ exec: 'batchSubmit' }),
  },
  thresholds,
  summaryTrendStats,
};

export function batchSubmit() {
  const tasks = [];
  for (let i = 0; i < BATCH; i++) tasks.push(taskSpec());

  const res = invoke(gateway, RPC.SubmitTasks, { tasks });
  const results = isOk(res) ? field(res.message, 'results', 'results') || [] : [];
  let accepted = 0;
  for (const r of results) {
    if (r && r.accepted && !r.error) accepted++;
  }
  if (isOk(res)) {
    itemsAccepted.add(accepted);
    itemsRejected.add(BATCH - accepted);
    for (let i = 0; i < BATCH; i++) itemAcceptRate.add(i < accepted);
  }

  check(res, {
    'SubmitTasks status is OK': (r) => isOk(r),
    'SubmitTasks returned one result per item': () => results.length === BATCH,
    'SubmitTasks accepted every item': () => accepted === BATCH,
  });
}

export default batchSubmit;
