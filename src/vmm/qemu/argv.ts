import { GUEST_ADDRESS, GUEST_GATEWAY, GUEST_NET_ARG, USER_NET, USER_NET_ARG, type PublishedPort } from '../../domain/network.js';
import type { MachineFiles, MachineSpec } from '../backend.js';

/** The tap the engine makes in each VM's namespace (network/vm-namespace.ts). */
export const TAP_NAME = 'tap0';
import { confinementArgv, type RunAs } from './confinement.js';
import { incomingSocketPath } from './files.js';
import { hostTscKhz } from './host-tsc.js';
import { shareQemuArgs } from './virtiofs.js';

export const AGENT_PORT_NAME = 'cell.agent';
export const MACHINE_TYPE = 'microvm';
/**
 * The machine's devices (a snapshot's compatibility key names them: state saved with other devices
 * does not load). No PIT: the guest keeps time with the TSC and the local APIC timer, and a PIT
 * left counting woke every idle guest's QEMU 36 times a second (its square wave's half period).
 */
export const MACHINE_OPTIONS = 'x-option-roms=off,isa-serial=on,rtc=on,pit=off';

/**
 * TCG's translated-code cache, in MiB (`-accel tcg,tb-size=`). QEMU's default is 1 GiB, allocated
 * as the guest runs new code, and it only grows until full: a guest short of memory drops and
 * re-reads its code pages, each read translated afresh, and the cache grew by ~1.5 MiB/s (measured:
 * from 45 MiB after boot to 150 MiB in 50 s of a 128 MiB guest's OOM), past the QEMU's cgroup
 * memory limit, so the host killed the whole VM before the guest's own OOM killer acted. Bounded,
 * a full cache is flushed and refilled; a boot fills about 45 MiB. cgroup.ts counts it in the limit.
 */
export const TCG_CODE_CACHE_MIB = 64;

/**
 * The guest CPU under TCG: QEMU's default model with ARAT (the APIC timer keeps running in idle
 * states). Without it the guest kernel cannot stop its tick when idle (no broadcast timer on
 * microvm), so every idle guest took 250 timer interrupts a second, each a wake-up of its QEMU:
 * measured 2.5% of a core per idle VM, 100 idle forks saturating both cores (exec p50 1 s). With
 * it: 0.4% (bench/fleet.ts). Part of the snapshot compatibility key (engine/context.ts).
 */
export const TCG_CPU_MODEL = 'qemu64,+arat';

/**
 * Kernel arguments. The three timer arguments matter under TCG: without them concurrent guests on
 * a busy host hang in early boot (measured: 4 at once on 2 cores all hung; with them all booted).
 * panic=-1 plus QEMU's -no-reboot turns a guest panic into a QEMU exit instead of a hang.
 */
/** Disks are found in the guest by serial (virtio-mmio devices do not appear in command-line order). */
export const ROOT_DISK_SERIAL = 'cell-root';
export const DATA_DISK_SERIAL = 'cell-data';

/** Serial of the disk of a VM's `index`th volume (the agent finds it by this). */
export const volumeSerial = (index: number) => `cell-vol-${index}`;

export function kernelCmdline(spec: Pick<MachineSpec, 'hostname' | 'dataDisk' | 'network' | 'volumes' | 'hostFolders' | 'accelerator'>, extra: readonly string[] = []): string {
  return [
    'console=ttyS0',
    'quiet',
    'no_timer_check',
    `tsc_early_khz=${hostTscKhz()}`,
    'tsc=reliable',
    'panic=-1',
    // The crypto API's boot-time self-tests of every algorithm: ~200 ms of a cold boot under TCG.
    // They check the kernel's own implementations, which Debian's build already tested; they
    // guard nothing between guest and host.
    'cryptomgr.notests',
    // microvm has no PCI bus: skip the probe and its 'No config space access' complaint.
    'pci=off',
    // Under TCG only: a one-vCPU guest rewrites every LOCK prefix in the kernel's text to its UP form
    // at boot, and each write throws away the translated code of its page (~145 ms of a 1.5 s boot,
    // A/B). Kept, the prefixes cost each exec ~1 ms (TCG's atomic helpers; A/B 7.0 -> 8.0 ms p50).
    // Under KVM the rewrite is cheap and the UP forms are faster: it stays on.
    ...(spec.accelerator === 'tcg' ? ['noreplace-smp'] : []),
    `cell.hostname=${spec.hostname}`,
    `cell.root=serial:${ROOT_DISK_SERIAL}`,
    ...(spec.dataDisk ? [`cell.data=${spec.dataDisk.mountPoint}`] : []),
    // Paths are checked (domain/volume.ts): absolute, no spaces, no "..".
    ...(spec.volumes ?? []).map((v, i) => `cell.vol=${i}:${v.readOnly ? 'ro' : 'rw'}:${v.mountPoint}`),
    ...(spec.hostFolders ?? []).map((f, i) => `cell.share=${i}:${f.readOnly ? 'ro' : 'rw'}:${f.path}`),
    ...(spec.network ? [spec.network.user ? USER_NET_ARG : GUEST_NET_ARG] : []),
    ...extra,
  ].join(' ');
}

/** How the QEMU is confined (confinement.ts); none by default (bare benchmarks). */
export interface QemuConfinement {
  sandbox: boolean;
  runAs?: RunAs;
  /**
   * With `runAs`, disks come as inherited descriptors (`-add-fd`, `/dev/fdset/N`): QEMU reopens a
   * disk read-only when a migration ends (and read-write when an incoming one does), and as its
   * own user it could not reach the path in the machine's 0700 folder. Each set holds the
   * overlay opened read-write and read-only, at these descriptor numbers in the child.
   */
  diskFds?: { root: [number, number]; data?: [number, number]; volumes?: [number, number][] };
  /** The vhost-user socket of each host folder's virtiofsd, in spec.hostFolders' order. */
  shareSockets?: readonly string[];
}

const ROOT_FDSET = 1;
const DATA_FDSET = 2;
/** Volume `i`'s descriptors are set VOLUME_FDSET + i. */
const VOLUME_FDSET = 10;

function addFds(set: number, fds: [number, number] | undefined): string[] {
  return fds ? fds.flatMap((fd) => ['-add-fd', `fd=${fd},set=${set}`]) : [];
}

/** The qemu-system-x86_64 argument vector for a `-M microvm` guest. */
export function buildQemuArgv(
  spec: MachineSpec,
  files: MachineFiles,
  extraKernelArgs: readonly string[] = [],
  confinement: QemuConfinement = { sandbox: false },
): string[] {
  // An fdset keeps its descriptors open, and with them the OFD locks QEMU took on them: a lock
  // taken while the disk was written would outlive the write and block the next QEMU on the
  // layer (measured: "Failed to get shared \"write\" lock"). celld itself keeps one writer per overlay.
  const rootFile = confinement.diskFds ? `/dev/fdset/${ROOT_FDSET},file.locking=off` : files.overlay;
  const dataFile = confinement.diskFds?.data ? `/dev/fdset/${DATA_FDSET},file.locking=off` : files.dataOverlay;
  const throttle = driveThrottling(spec.limits);
  const accel = spec.accelerator === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', `tcg,tb-size=${TCG_CODE_CACHE_MIB}`, '-cpu', TCG_CPU_MODEL];
  return [
    '-name', `cellvm-${spec.id},process=cellvm-${spec.id.slice(0, 12)}`,
    '-M', `${MACHINE_TYPE},${MACHINE_OPTIONS},memory-backend=mem0`,
    ...accel,
    '-m', `${spec.memoryMib}M`,
    '-object',
    `memory-backend-file,id=mem0,size=${spec.memoryMib}M,mem-path=${spec.memory.path},share=${spec.memory.shared ? 'on' : 'off'}`,
    '-smp', String(spec.cpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    // A socket for `cell console`, and everything the guest writes logged too. Append-only, so celld
    // can cut the log back when a guest floods its console (console-log-cap.ts).
    '-chardev', `socket,id=console,path=${files.consoleSocket},server=on,wait=off,logfile=${files.serialLog},logappend=on`,
    '-serial', 'chardev:console',
    '-kernel', spec.kernelPath,
    '-initrd', spec.initrdPath,
    '-append', kernelCmdline(spec, extraKernelArgs),
    ...addFds(ROOT_FDSET, confinement.diskFds?.root),
    ...addFds(DATA_FDSET, confinement.diskFds?.data),
    ...(confinement.diskFds?.volumes ?? []).flatMap((fds, i) => addFds(VOLUME_FDSET + i, fds)),
    '-drive', `id=root,file=${rootFile},format=qcow2,if=none,discard=unmap${throttle}`,
    '-device', `virtio-blk-device,drive=root,serial=${ROOT_DISK_SERIAL}`,
    ...(spec.dataDisk
      ? ['-drive', `id=data,file=${dataFile},format=qcow2,if=none,discard=unmap${throttle}`, '-device', `virtio-blk-device,drive=data,serial=${DATA_DISK_SERIAL}`]
      : []),
    ...(spec.network
      ? ['-netdev', spec.network.user ? userNetdev(spec.network.user.forwards) : `tap,id=net0,ifname=${TAP_NAME},script=no,downscript=no`, '-device', `virtio-net-device,netdev=net0,mac=${spec.network.mac}`]
      : []),
    ...(spec.volumes ?? []).flatMap((v, i) => {
      const file = confinement.diskFds?.volumes?.[i] ? `/dev/fdset/${VOLUME_FDSET + i},file.locking=off` : v.imagePath;
      return ['-drive', `id=vol${i},file=${file},format=raw,if=none,discard=unmap${v.readOnly ? ',readonly=on' : ''}${throttle}`, '-device', `virtio-blk-device,drive=vol${i},serial=${volumeSerial(i)}`];
    }),
    ...shareQemuArgs(confinement.shareSockets ?? []),
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${files.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    '-object', 'rng-random,id=rng0,filename=/dev/urandom',
    '-device', `virtio-rng-device,rng=rng0${rngLimit(spec.limits)}`,
    '-qmp', `unix:${files.qmpSocket},server=on,wait=off`,
    '-pidfile', files.pidFile,
    // -S keeps a restored guest paused until the host has checked the restore and resumes it.
    // The incoming socket is made now, while QEMU is still root (it cannot write here after -runas).
    ...(spec.incoming ? ['-S', '-incoming', `unix:${incomingSocketPath(spec.dir)}`] : []),
    ...confinementArgv(confinement),
  ];
}

/** QEMU's block throttling (leaky bucket, reads and writes together) for each disk. */
function driveThrottling(limits: MachineSpec['limits']): string {
  let opts = '';
  if (limits?.diskIops) opts += `,throttling.iops-total=${limits.diskIops}`;
  if (limits?.diskBytesPerSec) opts += `,throttling.bps-total=${limits.diskBytesPerSec}`;
  return opts;
}

/** virtio-rng hands out at most max-bytes per period (ms). */
function rngLimit(limits: MachineSpec['limits']): string {
  return limits?.rngBytesPerSec ? `,max-bytes=${limits.rngBytesPerSec},period=1000` : '';
}

/**
 * QEMU's user-mode stack (slirp) on the guest's usual address, IPv4 only, and a host forward per
 * published port (QEMU listens on the host port itself; the guest address is named: its default is DHCP's first, outside this subnet).
 */
export function userNetdev(forwards: readonly PublishedPort[]): string {
  const hostfwd = forwards.map((p) => `,hostfwd=${p.protocol}:${p.hostIp}:${p.hostPort}-${GUEST_ADDRESS}:${p.guestPort}`).join('');
  return `user,id=net0,net=${USER_NET.cidr},host=${GUEST_GATEWAY},dns=${USER_NET.resolver},ipv6=off${hostfwd}`;
}
