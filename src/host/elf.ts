import { open } from 'node:fs/promises';

/**
 * Just enough ELF64 (little-endian, x86_64) reading for set-up: whether a binary is static (no
 * PT_INTERP program header, so it runs in a guest without a dynamic loader) and a kernel
 * module's `.modinfo` strings (its `depends=` is what depmod turns into modules.dep; the Debian
 * kernel package ships no modules.dep because depmod runs only when it is installed).
 */

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const PT_INTERP = 3;

function checkElf64(buf: Buffer, what: string): void {
  if (buf.length < 64 || !buf.subarray(0, 4).equals(ELF_MAGIC)) throw new Error(`${what} is not an ELF file`);
  if (buf[4] !== ELFCLASS64 || buf[5] !== ELFDATA2LSB) throw new Error(`${what} is not a 64-bit little-endian ELF file`);
}

/** True when the ELF executable at `path` has no program interpreter (statically linked). */
export async function isStaticElf(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    checkElf64(head, path);
    const phoff = Number(head.readBigUInt64LE(0x20));
    const phentsize = head.readUInt16LE(0x36);
    const phnum = head.readUInt16LE(0x38);
    const table = Buffer.alloc(phentsize * phnum);
    await fh.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) {
      if (table.readUInt32LE(i * phentsize) === PT_INTERP) return false;
    }
    return true;
  } finally {
    await fh.close();
  }
}

/** The key=value strings of a kernel module's `.modinfo` section, e.g. depends=virtio,virtio_ring. */
export function readModinfo(ko: Buffer, what = 'module'): Map<string, string[]> {
  checkElf64(ko, what);
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  const section = (i: number) => {
    const at = shoff + i * shentsize;
    return {
      name: ko.readUInt32LE(at),
      offset: Number(ko.readBigUInt64LE(at + 0x18)),
      size: Number(ko.readBigUInt64LE(at + 0x20)),
    };
  };
  const names = section(shstrndx);
  const nameOf = (off: number) => {
    const start = names.offset + off;
    return ko.toString('latin1', start, ko.indexOf(0, start));
  };
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (nameOf(s.name) !== '.modinfo') continue;
    const info = new Map<string, string[]>();
    for (const entry of ko.toString('utf8', s.offset, s.offset + s.size).split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
    return info;
  }
  throw new Error(`${what} has no .modinfo section`);
}

const PT_NOTE = 4;
/** XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point QEMU needs to boot an ELF kernel directly. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** True when the ELF kernel image `elf` has a PVH entry note (QEMU refuses an ELF kernel without one). */
export function hasPvhEntryNote(elf: Buffer): boolean {
  checkElf64(elf, 'kernel image');
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + phentsize > elf.length || elf.readUInt32LE(at) !== PT_NOTE) continue;
    const offset = Number(elf.readBigUInt64LE(at + 0x08));
    const end = Math.min(elf.length, offset + Number(elf.readBigUInt64LE(at + 0x20)));
    // Notes: namesz, descsz, type, then name and desc each padded to 4 bytes.
    for (let p = offset; p + 12 <= end; ) {
      const namesz = elf.readUInt32LE(p);
      const descsz = elf.readUInt32LE(p + 4);
      const type = elf.readUInt32LE(p + 8);
      const name = elf.toString('latin1', p + 12, p + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      p += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

const align4 = (n: number) => (n + 3) & ~3;
