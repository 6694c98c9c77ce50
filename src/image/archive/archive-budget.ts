import { CellError, ErrorCodes } from '../../domain/errors.js';
import { freeBytes, mib } from '../free-space.js';

/**
 * What an archive given to `cell image import` or `cell snapshot import` may cost, checked entry by
 * entry as its headers are read and before any member's contents are written: so many entries (a
 * tar of three million empty files is refused at the first one past the cap, not unpacked), and
 * members adding up to no more than the configured cap (`importMaxBytes`) and than the free space
 * of the file system they go to (a member claiming 1 TiB is refused by its header alone).
 */
export interface ArchiveLimits {
  maxEntries: number;
  /** `importMaxBytes`; undefined: free space alone. */
  maxBytes?: number;
}

/** Image archives: a docker save of a 1000-layer image has about 4000 entries. */
export const MAX_IMAGE_ARCHIVE_ENTRIES = 65_536;

export class ArchiveBudget {
  private entries = 0;
  private bytes = 0;

  private constructor(
    private readonly what: string,
    private readonly dir: string,
    private readonly free: number,
    private readonly limits: ArchiveLimits,
  ) {}

  /** `what` names the archive in errors ("archive /x.tar"); `dir` is where its members are written. */
  static async open(what: string, dir: string, limits: ArchiveLimits): Promise<ArchiveBudget> {
    return new ArchiveBudget(what, dir, await freeBytes(dir), limits);
  }

  /** One more entry (of any kind). */
  entry(): void {
    if (++this.entries > this.limits.maxEntries) {
      throw new CellError(ErrorCodes.SIZE_LIMIT, `${this.what} has more than ${this.limits.maxEntries} entries: refused before unpacking it`, {
        maxEntries: this.limits.maxEntries,
      });
    }
  }

  /** A member about to be written takes `bytes` of the file system. */
  take(bytes: number, member: string): void {
    this.bytes += bytes;
    const { maxBytes } = this.limits;
    if (maxBytes !== undefined && this.bytes > maxBytes) {
      throw new CellError(
        ErrorCodes.SIZE_LIMIT,
        `${this.what}: its members add up to more than the ${maxBytes} bytes imports may take (importMaxBytes), at ${member.slice(0, 200)}`,
        { maxBytes, bytes: this.bytes },
      );
    }
    if (this.bytes > this.free) {
      throw new CellError(
        ErrorCodes.RESOURCES_EXHAUSTED,
        `the file system of ${this.dir} has too little room: ${this.what} needs at least ${mib(this.bytes)} MiB (its members up to ${member.slice(0, 200)}), ${mib(this.free)} MiB are free`,
        { neededBytes: this.bytes, freeBytes: this.free },
      );
    }
  }
}
