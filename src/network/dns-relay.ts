import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { encodeAnswer, encodeError, parseQuery, RCODE, TYPE } from './dns-wire.js';

/**
 * The VMs' resolver: a UDP relay on the bridge's address that forwards each query to the host's
 * own resolvers (loopback ones included: the relay runs on the host) and the answer back. Guests
 * are hostile: packets are size-checked, queries in flight are capped per VM and in total, and an
 * upstream that does not answer frees its slot after a timeout. Each query leaves from a socket of
 * its own (a random source port, so answers cannot be mixed up or easily spoofed).
 */
export interface DnsRelayOptions {
  listen: string;
  /** Upstream resolvers; the host's /etc/resolv.conf by default. */
  upstreams?: string[];
  timeoutMs?: number;
  maxInFlight?: number;
  maxPerClient?: number;
  /** Queries a client may send per second, answered locally or forwarded; the rest are dropped. */
  maxRatePerClient?: number;
  /**
   * Names celld answers itself (VMs on a network, by name): the addresses for `name` as the VM at
   * `client` may see them, `nxdomain` for a name its egress rules deny, or null to forward the
   * query. Only A queries are answered with addresses; other types get an empty answer.
   */
  local?: (name: string, client: string) => string[] | 'nxdomain' | 'refused' | null;
}

const MAX_PACKET = 4096;

export class DnsRelay {
  private readonly socket: Socket;
  private inFlight = 0;
  private readonly perClient = new Map<string, number>();
  /** Queries per client in the current one-second window (cleared each window: bounded). */
  private readonly rate = new Map<string, number>();
  private rateWindow = 0;
  private readonly upstreams: string[];
  /** Queries dropped (over a cap, malformed): for `cell info`. */
  dropped = 0;

  private constructor(
    socket: Socket,
    private readonly opts: Required<Omit<DnsRelayOptions, 'upstreams' | 'local'>> & { upstreams: string[]; local?: DnsRelayOptions['local'] },
  ) {
    this.socket = socket;
    this.upstreams = opts.upstreams;
    socket.on('message', (msg, from) => {
      // Nothing a guest sends may throw out of this handler (an uncaught exception ends celld).
      try {
        this.relay(msg, from.address, from.port);
      } catch {
        this.dropped++;
      }
    });
    socket.on('error', () => {});
  }

  static async start(opts: DnsRelayOptions): Promise<DnsRelay> {
    const socket = createSocket({ type: 'udp4', reuseAddr: true });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(53, opts.listen, () => {
          socket.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      socket.close();
      throw err;
    }
    return new DnsRelay(socket, {
      listen: opts.listen,
      upstreams: opts.upstreams ?? hostResolvers(),
      timeoutMs: opts.timeoutMs ?? 3000,
      maxInFlight: opts.maxInFlight ?? 512,
      maxPerClient: opts.maxPerClient ?? 32,
      maxRatePerClient: opts.maxRatePerClient ?? 200,
      local: opts.local,
    });
  }

  /** Whether `address` may send one more query in this second (every query costs celld work, local ones included). */
  private withinRate(address: string): boolean {
    const now = Date.now();
    if (now - this.rateWindow >= 1000) {
      this.rate.clear();
      this.rateWindow = now;
    }
    const n = (this.rate.get(address) ?? 0) + 1;
    this.rate.set(address, n);
    return n <= this.opts.maxRatePerClient;
  }

  private relay(query: Buffer, address: string, port: number): void {
    // Port 0 cannot be answered (dgram's send throws on it); a raw socket in a guest can send from it.
    if (port === 0 || query.length > MAX_PACKET || !this.withinRate(address)) {
      this.dropped++;
      return;
    }
    if (this.opts.local) {
      const parsed = parseQuery(query);
      // What the relay cannot read is not forwarded either: a name the policy never saw (a compression
      // pointer, two questions, another class, another opcode) must not reach the upstream resolver.
      if (!parsed.ok) {
        this.dropped++;
        if (!parsed.drop) this.socket.send(encodeError(parsed.id, parsed.rd, parsed.rcode), port, address);
        return;
      }
      const found = this.opts.local(parsed.query.question.name, address);
      if (found === 'refused') {
        this.dropped++;
        this.socket.send(encodeAnswer(parsed.query, RCODE.REFUSED, [], 5, 512), port, address);
        return;
      }
      if (found === 'nxdomain') {
        this.socket.send(encodeAnswer(parsed.query, RCODE.NXDOMAIN, [], 5, 512), port, address);
        return;
      }
      if (parsed.query.question.class !== 1) {
        this.socket.send(encodeAnswer(parsed.query, RCODE.REFUSED, [], 5, 512), port, address);
        return;
      }
      if (found) {
        const a = parsed.query.question.type === TYPE.A ? found : [];
        this.socket.send(encodeAnswer(parsed.query, RCODE.NOERROR, a, 5, 512), port, address);
        return;
      }
    }
    const upstream = this.upstreams[0];
    const used = this.perClient.get(address) ?? 0;
    // 12 bytes of header at least; no answer ever sent back to us as a question.
    if (!upstream || query.length < 12 || (query[2]! & 0x80) !== 0 || used >= this.opts.maxPerClient || this.inFlight >= this.opts.maxInFlight) {
      this.dropped++;
      return;
    }
    this.inFlight++;
    this.perClient.set(address, used + 1);
    const out = createSocket('udp4');
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      out.close();
      this.inFlight--;
      const left = (this.perClient.get(address) ?? 1) - 1;
      if (left <= 0) this.perClient.delete(address);
      else this.perClient.set(address, left);
    };
    const timer = setTimeout(finish, this.opts.timeoutMs);
    out.on('error', finish);
    out.on('message', (answer, from) => {
      // Only the upstream's answer to this question (same id) goes back.
      if (from.address === upstream && answer.length >= 12 && answer.length <= MAX_PACKET && answer.readUInt16BE(0) === query.readUInt16BE(0)) {
        this.socket.send(answer, port, address);
      }
      finish();
    });
    out.send(query, 53, upstream, (err) => {
      if (err) finish();
    });
  }

  close(): void {
    this.socket.close();
  }
}

/** The host's resolvers (IPv4 only), from CELL_DNS_SERVERS or /etc/resolv.conf. */
export function hostResolvers(env: NodeJS.ProcessEnv = process.env): string[] {
  if (env.CELL_DNS_SERVERS) return env.CELL_DNS_SERVERS.split(',').map((s) => s.trim()).filter(Boolean);
  try {
    return readFileSync('/etc/resolv.conf', 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(l)?.[1])
      .filter((s): s is string => Boolean(s));
  } catch {
    return [];
  }
}
