import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { BlobStore } from '../../src/store/blob-store.js';
import { sha256Digest } from '../../src/image/digest.js';
import { MediaTypes } from '../../src/image/media-types.js';
import { TAR_END, tarHeader, tarPadding, type TarWriteEntry } from '../../src/image/archive/tar-writer.js';

/**
 * Test images made from scratch: layer trees written to a temp dir and packed with the host's GNU
 * tar (so the reader is tested against a real tar), hostile layers written entry by entry, and
 * OCI configs, manifests and indexes stored in a blob store ready to push.
 */
export type TreeSpec = Record<string, string | { symlink: string } | { dir: true }>;

export function tarOfTree(spec: TreeSpec): Buffer {
  const dir = mkdtempSync('/tmp/cellt-layer-');
  try {
    for (const [path, v] of Object.entries(spec)) {
      const full = join(dir, path);
      mkdirSync(dirname(full), { recursive: true });
      if (typeof v === 'string') writeFileSync(full, v);
      else if ('symlink' in v) symlinkSync(v.symlink, full);
      else mkdirSync(full, { recursive: true });
    }
    return execFileSync('tar', ['--format=posix', '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '--mtime=@1700000000', '-C', dir, '-cf', '-', '.'], {
      maxBuffer: 512 * 1024 * 1024,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A tar made entry by entry, for names and links no file system tree can hold. */
export function rawTar(entries: (TarWriteEntry & { data?: string })[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.data ?? '');
    parts.push(tarHeader({ ...e, size: data.length }));
    if (e.type === 'file') parts.push(data, tarPadding(data.length));
  }
  parts.push(TAR_END);
  return Buffer.concat(parts);
}

export type Compression = 'gzip' | 'zstd' | 'none';

export function compress(tar: Buffer, how: Compression): Buffer {
  if (how === 'gzip') return gzipSync(tar);
  if (how === 'zstd') return execFileSync('zstd', ['-q', '-c', '-3'], { input: tar, maxBuffer: 512 * 1024 * 1024 });
  return tar;
}

const LAYER_TYPES: Record<Compression, string> = {
  gzip: MediaTypes.OCI_LAYER_GZIP,
  zstd: MediaTypes.OCI_LAYER_ZSTD,
  none: MediaTypes.OCI_LAYER,
};

export interface BuiltImage {
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layerDigests: string[];
}

/** Stores layers, config and an OCI manifest; returns the manifest digest. */
export async function storeImage(
  root: string,
  opts: {
    layers: { tar: Buffer; compression: Compression }[];
    config?: Record<string, unknown>;
    platform?: { os: string; architecture: string; variant?: string };
  },
): Promise<BuiltImage> {
  const store = new BlobStore(root);
  const layers = [];
  for (const l of opts.layers) {
    const bytes = compress(l.tar, l.compression);
    const digest = await store.put(bytes);
    layers.push({ mediaType: LAYER_TYPES[l.compression], digest, size: bytes.length });
  }
  const platform = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const config = Buffer.from(
    JSON.stringify({
      ...platform,
      config: opts.config ?? { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: opts.layers.map((l) => sha256Digest(l.tar)) },
    }),
  );
  const configDigest = await store.put(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.OCI_MANIFEST,
      config: { mediaType: MediaTypes.OCI_CONFIG, digest: configDigest, size: config.length },
      layers,
    }),
  );
  const manifestDigest = await store.put(manifest);
  return { manifestDigest, manifestSize: manifest.length, configDigest, layerDigests: layers.map((l) => l.digest) };
}

export async function storeIndex(root: string, images: { image: BuiltImage; platform: { os: string; architecture: string; variant?: string } }[]): Promise<string> {
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.OCI_INDEX,
      manifests: images.map((i) => ({ mediaType: MediaTypes.OCI_MANIFEST, digest: i.image.manifestDigest, size: i.image.manifestSize, platform: i.platform })),
    }),
  );
  return new BlobStore(root).put(index);
}

/** A docker-save archive made by hand: manifest.json, the config, one dir per layer, a linked repeat. */
export function dockerSave(dir: string, tag: string, layers: Buffer[]): string {
  const root = join(dir, 'save');
  mkdirSync(root, { recursive: true });
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/app'], Env: ['X=y'] }, rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256Digest(l)) } }));
  const configName = `${sha256Digest(config).slice(7)}.json`;
  writeFileSync(join(root, configName), config);
  const names: string[] = [];
  layers.forEach((l, i) => {
    const id = `layer${i}`;
    mkdirSync(join(root, id));
    if (i > 0 && l.equals(layers[0]!)) symlinkSync('../layer0/layer.tar', join(root, id, 'layer.tar'));
    else writeFileSync(join(root, id, 'layer.tar'), l);
    names.push(`${id}/layer.tar`);
  });
  writeFileSync(join(root, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [tag], Layers: names }]));
  const file = join(dir, 'save.tar');
  execFileSync('tar', ['-C', root, '-cf', file, '.']);
  return file;
}
