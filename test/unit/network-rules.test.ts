import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNetworks, parsePortSpec, parseSubnet, validatePorts } from '../../src/domain/network.js';

test("-p takes Docker's forms, but a port without a host address binds 127.0.0.1", () => {
  assert.deepEqual(parsePortSpec('8080:80'), { hostIp: '127.0.0.1', hostPort: 8080, guestPort: 80, protocol: 'tcp' });
  assert.deepEqual(parsePortSpec('0.0.0.0:8080:80'), { hostIp: '0.0.0.0', hostPort: 8080, guestPort: 80, protocol: 'tcp' });
  assert.deepEqual(parsePortSpec('5353:53/udp'), { hostIp: '127.0.0.1', hostPort: 5353, guestPort: 53, protocol: 'udp' });
  assert.deepEqual(parsePortSpec('80'), { hostIp: '127.0.0.1', hostPort: 0, guestPort: 80, protocol: 'tcp' });
  assert.deepEqual(parsePortSpec('127.0.0.1::80'), { hostIp: '127.0.0.1', hostPort: 0, guestPort: 80, protocol: 'tcp' });
  for (const bad of ['', '0', '70000', '80/sctp', 'a:80', '1.2.3:80:80', '8080:80:80:80', ':80', '80/tcp/udp']) {
    assert.throws(() => parsePortSpec(bad), /^CellError: -p /, bad);
  }
});

test('published ports: one host port once, at most 64', () => {
  assert.throws(() => validatePorts([{ guestPort: 80, hostPort: 8080 }, { guestPort: 81, hostPort: 8080 }]), /host port 127\.0\.0\.1:8080\/tcp is published twice/);
  assert.equal(validatePorts([{ guestPort: 80 }, { guestPort: 81 }]).length, 2, 'any free port twice is fine');
  assert.throws(() => validatePorts(Array.from({ length: 65 }, (_, i) => ({ guestPort: i + 1 }))), /at most 64/);
});

test('subnets and network names', () => {
  const s = parseSubnet('10.89.3.7/16');
  assert.equal(s.gateway, '10.89.0.1');
  assert.equal(s.last - s.first + 1, 65534 - 1);
  assert.throws(() => parseSubnet('10.89.0.0/30'), /from \/8 to \/28/);
  assert.deepEqual(parseNetworks(['none']), [], 'no NIC');
  assert.equal(parseNetworks([]), undefined, 'not asked: the default');
  assert.deepEqual(parseNetworks(['backend', 'default']), ['backend', 'default']);
  assert.throws(() => parseNetworks(['none', 'default']), /cannot be combined/);
  assert.throws(() => parseNetworks(['a', 'a']), /named twice/);
  assert.throws(() => parseNetworks(['Bad Name']), /network name "Bad Name"/);
});
