/** The OCI and Docker media types cellvm understands, and how each one is handled. */
export const MediaTypes = {
  OCI_MANIFEST: 'application/vnd.oci.image.manifest.v1+json',
  OCI_INDEX: 'application/vnd.oci.image.index.v1+json',
  OCI_CONFIG: 'application/vnd.oci.image.config.v1+json',
  OCI_LAYER: 'application/vnd.oci.image.layer.v1.tar',
  OCI_LAYER_GZIP: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OCI_LAYER_ZSTD: 'application/vnd.oci.image.layer.v1.tar+zstd',
  DOCKER_MANIFEST: 'application/vnd.docker.distribution.manifest.v2+json',
  DOCKER_LIST: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DOCKER_CONFIG: 'application/vnd.docker.container.image.v1+json',
  DOCKER_LAYER_GZIP: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DOCKER_SCHEMA1: 'application/vnd.docker.distribution.manifest.v1+json',
  DOCKER_SCHEMA1_SIGNED: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** What we ask registries for, best first; schema 1 is left out so no registry down-converts to it. */
export const MANIFEST_ACCEPT = [
  MediaTypes.OCI_INDEX,
  MediaTypes.DOCKER_LIST,
  MediaTypes.OCI_MANIFEST,
  MediaTypes.DOCKER_MANIFEST,
].join(', ');

export const INDEX_TYPES: readonly string[] = [MediaTypes.OCI_INDEX, MediaTypes.DOCKER_LIST];
export const IMAGE_MANIFEST_TYPES: readonly string[] = [MediaTypes.OCI_MANIFEST, MediaTypes.DOCKER_MANIFEST];
export const CONFIG_TYPES: readonly string[] = [MediaTypes.OCI_CONFIG, MediaTypes.DOCKER_CONFIG];
export const SCHEMA1_TYPES: readonly string[] = [MediaTypes.DOCKER_SCHEMA1, MediaTypes.DOCKER_SCHEMA1_SIGNED];

/**
 * Layer types we can unpack. Compression is detected from the bytes anyway (unpack/decompress.ts);
 * the media type only has to say "a tar, maybe compressed". Non-distributable (foreign) layers are
 * tars too and are fetched from the registry like any other.
 */
const LAYER_TYPES: readonly string[] = [
  MediaTypes.OCI_LAYER,
  MediaTypes.OCI_LAYER_GZIP,
  MediaTypes.OCI_LAYER_ZSTD,
  MediaTypes.DOCKER_LAYER_GZIP,
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
];

export function isLayerType(mediaType: string): boolean {
  return LAYER_TYPES.includes(mediaType);
}
