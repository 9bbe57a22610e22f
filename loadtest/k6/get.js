// GetTask latency on a hot set of existing tasks, at a constant arrival rate.
//
//   k6 run -e API_KEY=... -e RATE=5000 -e DURATION=60s -e HOT_SET=100 loadtest/k6/get.js
//
// setup() submits HOT_SET tasks through the gateway and polls the reader until each is
// visible; the test then reads random ids from that set, so it measures the reader's cached
// (L1/L2) lookup path. Served tiers are counted in dispatch_get_served_from_*.

import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  loadGatewayAndReader, hotSetSetup, getHotTask, isOk, field, arrivalScenario, buildThresholds,
  latencyLimits, GET_LIMITS, SETUP_TIMEOUT_S, summaryTrendStats,
} from './lib/common.js';

const { gateway, reader } = loadGatewayAndReader();

const servedFromStore = new Counter('dispatch_get_served_from_store');
const servedStale = new Counter('dispatch_get_stale');

const limits = latencyLimits('GET', GET_LIMITS.p95, GET_LIMITS.p99);

export const options = {
  scenarios: {
    get: arrivalScenario({ exec: 'get' }),
  },
  thresholds: buildThresholds([{ scenario: 'get', p95: limits.p95, p99: limits.p99 }]),
  setupTimeout: `${SETUP_TIMEOUT_S + 60}s`,
  summaryTrendStats,
};

export function setup() {
  return hotSetSetup(gateway, reader, sleep);
}

export function get(data) {
  const res = getHotTask(reader, data.ids);
  if (isOk(res)) {
    if (field(res.message, 'servedFrom', 'served_from') === 'SERVED_FROM_STORE') servedFromStore.add(1);
    if (field(res.message, 'stale', 'stale') === true) servedStale.add(1);
  }
}

export default get;
