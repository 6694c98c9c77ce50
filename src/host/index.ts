/** Host set-up: what a VM boots from (kernel, initramfs, agent, built-in images) and the host packages behind it. */
export { ensureHostAssets, type EnsureHostAssetsOptions } from './setup.js';
export type { HostAssets, BuiltinImage, SetupProgress, ProgressFn } from './types.js';
export { ensureHostPackages, missingRequirements, HOST_REQUIREMENTS, type HostRequirement } from './packages.js';
export { ensureKernel, KERNEL_META_PACKAGE, type GuestKernel, type KernelManifest } from './kernel.js';
export { GUEST_MODULES } from './kernel-modules.js';
export { ensureAgent, defaultAgentSource, type AgentBinary } from './agent-build.js';
export { ensureInitramfs, INITRAMFS_COMPRESSION, type Initramfs } from './initramfs.js';
export { ensureBusyboxImage } from './busybox-image.js';
export { CpioWriter } from './cpio.js';
