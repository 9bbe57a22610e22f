// Unary SubmitTask throughput/latency at a constant arrival rate.
//
//   k6 run -e API_KEY=... -e RATE=2000 -e DURATION=60s loadtest/k6/submit.js
//
// Measures end-to-end gateway acceptance latency: OK means the task is durable (Kafka acks=all
// or the MySQL outbox), so this is the client-visible cost of one durable submit.

import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import {
  cfg, conn, invoke, isOk, field, taskSpec, arrivalScenario, buildThresholds, latencyLimits,
  SUBMIT_LIMITS, summaryTrendStats, GATEWAY_PROTO, RPC,
} from './lib/common.js';

const gatewayClient = new grpc.Client();
gatewayClient.load([cfg.protoDir], GATEWAY_PROTO);

const gateway = conn(gatewayClient, cfg.gatewayAddr);

const acceptedViaOutbox = new Counter('dispatch_accepted_via_outbox');
const duplicates = new Counter('dispatch_submit_duplicates');

const limits = latencyLimits('SUBMIT', SUBMIT_LIMITS.p95, SUBMIT_LIMITS.p99);

export const options = {
  scenarios: {
    submit: arrivalScenario({ exec: 'submit' }),
  },
  thresholds: buildThresholds([{ scenario: 'submit', p95: limits.p95, p99: limits.p99 }]),
  summaryTrendStats,
};

export function submit() {
  const res = invoke(gateway, RPC.SubmitTask, { task: taskSpec() });
  const ok = check(res, {
    'SubmitTask status is OK': (r) => isOk(r),
    'SubmitTask returned a task id': (r) => isOk(r) && !!field(r.message, 'taskId', 'task_id'),
  });
  if (ok) {
    if (field(res.message, 'acceptedVia', 'accepted_via') === 'ACCEPTED_VIA_OUTBOX') acceptedViaOutbox.add(1);
    if (field(res.message, 'duplicate', 'duplicate') === true) duplicates.add(1);
  }
}

export default submit;
