import { CellError, ErrorCodes } from './errors.js';
import { ipToInt, isIpv4 } from './network.js';

/**
 * What a VM may reach outside (docs/networking.md, "Egress"), enforced on the host. Rules name
 * domains (`pypi.org`, `*.pythonhosted.org`: the domain and every name under it) or IPv4 CIDRs.
 * Default allow; with any `allow` rule, whatever no allow rule names is denied; `deny` wins over
 * `allow`. Domains are matched on what a connection asks for (HTTP Host, TLS SNI) and on DNS
 * questions, never on the address the guest picked.
 */
export interface EgressPolicy {
  allow: EgressRules;
  deny: EgressRules;
}

export interface EgressRules {
  domains: string[];
  cidrs: string[];
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const MAX_RULES = 256;

/** `allow=a.com,*.b.org,10.0.0.0/8` and `deny=...` (repeatable), as `--egress` takes them. */
export function parseEgress(values: readonly string[]): EgressPolicy | undefined {
  if (values.length === 0) return undefined;
  const policy: EgressPolicy = { allow: { domains: [], cidrs: [] }, deny: { domains: [], cidrs: [] } };
  for (const value of values) {
    const m = /^(allow|deny)=(.+)$/.exec(value.trim());
    if (!m) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--egress ${value}: expected allow=RULE,... or deny=RULE,... (a rule is a domain, *.domain or an IPv4 CIDR)`);
    const rules = policy[m[1] as 'allow' | 'deny'];
    for (const rule of m[2]!.split(',').map((r) => r.trim().toLowerCase()).filter(Boolean)) {
      if (isCidr(rule)) rules.cidrs.push(normalizeCidr(rule));
      else if (isDomainRule(rule)) rules.domains.push(rule);
      else throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--egress: "${rule}" is neither a domain (example.com, *.example.com) nor an IPv4 CIDR (10.0.0.0/8, 1.2.3.4)`);
    }
  }
  return validateEgress(policy);
}

/** Checks a policy from a user, the API or an archive; returns it with rules normalized. */
export function validateEgress(policy: EgressPolicy): EgressPolicy {
  const clean = (r: EgressRules | undefined, which: string): EgressRules => {
    const domains = [...new Set(r?.domains ?? [])];
    const cidrs = [...new Set((r?.cidrs ?? []).map((c) => (isCidr(c) ? normalizeCidr(c) : c)))];
    if (domains.length + cidrs.length > MAX_RULES) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--egress: at most ${MAX_RULES} ${which} rules`);
    for (const d of domains) if (typeof d !== 'string' || !isDomainRule(d)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `egress ${which}: "${String(d)}" is not a domain rule`);
    for (const c of cidrs) if (typeof c !== 'string' || !isCidr(c)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `egress ${which}: "${String(c)}" is not an IPv4 CIDR`);
    return { domains, cidrs };
  };
  return { allow: clean(policy.allow, 'allow'), deny: clean(policy.deny, 'deny') };
}

function isDomainRule(rule: string): boolean {
  const name = rule.startsWith('*.') ? rule.slice(2) : rule;
  const labels = name.split('.');
  return name.length <= 253 && labels.length >= 1 && labels.every((l) => LABEL.test(l)) && !isIpv4(name);
}

function isCidr(rule: string): boolean {
  const [ip, prefix, ...rest] = rule.split('/');
  return rest.length === 0 && isIpv4(ip ?? '') && (prefix === undefined || (/^\d{1,2}$/.test(prefix) && Number(prefix) <= 32));
}

function normalizeCidr(rule: string): string {
  const [ip, prefix = '32'] = rule.split('/');
  const p = Number(prefix);
  const size = 2 ** (32 - p);
  const base = Math.floor(ipToInt(ip!) / size) * size;
  return `${[24, 16, 8, 0].map((s) => Math.floor(base / 2 ** s) % 256).join('.')}/${p}`;
}

const domainMatches = (rule: string, name: string) => (rule.startsWith('*.') ? name === rule.slice(2) || name.endsWith(rule.slice(1)) : name === rule);

function cidrContains(cidr: string, ip: string): boolean {
  const [base, prefix] = cidr.split('/');
  const size = 2 ** (32 - Number(prefix));
  return Math.floor(ipToInt(ip) / size) === Math.floor(ipToInt(base!) / size);
}

/** Whether a name (a DNS question, an HTTP Host, a TLS SNI) may be reached. */
export function allowsDomain(policy: EgressPolicy, name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, '');
  if (policy.deny.domains.some((r) => domainMatches(r, n))) return false;
  if (policy.allow.domains.length === 0 && policy.allow.cidrs.length === 0) return true;
  return policy.allow.domains.some((r) => domainMatches(r, n));
}

/**
 * Whether an address may be connected to: not denied, and allowed when there are allow rules
 * (an allowed domain's address counts as allowed: `viaAllowedName`).
 */
export function allowsAddress(policy: EgressPolicy, ip: string, viaAllowedName = false): boolean {
  if (policy.deny.cidrs.some((c) => cidrContains(c, ip))) return false;
  if (viaAllowedName || (policy.allow.domains.length === 0 && policy.allow.cidrs.length === 0)) return true;
  return policy.allow.cidrs.some((c) => cidrContains(c, ip));
}

/** Addresses no VM reaches unless an allow rule names them: loopback, link-local, private ranges. */
export const PRIVATE_RANGES = ['127.0.0.0/8', '169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '0.0.0.0/8'];

export function isPrivate(ip: string): boolean {
  return PRIVATE_RANGES.some((c) => cidrContains(c, ip));
}

export function hasDomainRules(policy: EgressPolicy | undefined): boolean {
  return !!policy && policy.allow.domains.length + policy.deny.domains.length > 0;
}

export function hasAllowRules(policy: EgressPolicy | undefined): boolean {
  return !!policy && policy.allow.domains.length + policy.allow.cidrs.length > 0;
}
