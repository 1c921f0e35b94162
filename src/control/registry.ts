/**
 * The handlers a server holds, by id and by frame number, and the rule that keeps the shared
 * capture sound: a MAC is carried by one handler per interface and role, since the capture of
 * that interface hands each frame to one owner.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import {
  type DataPath,
  type FabricMirror,
  type HandlerRef,
  type VxlanEndpoint,
} from "../dataplane/data_path.ts";
import { handlerNumber, type HandlerSpec } from "../dataplane/handler.ts";
import { type Peer } from "./peers.ts";
import { type AttachRequest } from "./rpc.ts";

export interface Entry {
  handler: HandlerRef;
  /** The key that binds this handler to the two servers that made it (rpc.ts). */
  bind: string;
  /** On the side that dialled: the peer, and what to ask of it again after a reconnect. */
  dial?: { peer: Peer; attach: AttachRequest };
  /** A handler whose far end is a VXLAN endpoint, not a VNET server: that endpoint. */
  vxlan?: VxlanEndpoint;
  /** On the side that accepted: the id of the server that dialled (reconciliation). */
  origin?: string;
  /** When the handler's link went down (accepting side), for orphan clean-up; 0 = up. */
  downSince: number;
}

export class Registry {
  readonly #entries = new Map<string, Entry>();
  readonly #byNumber = new Map<number, HandlerRef>();
  /** Ids being opened: taken, though not in the table until the data path answered. */
  readonly #opening = new Map<string, HandlerSpec>();

  constructor(readonly dataPath: DataPath) {}

  /** What the control plane knows of the switch fabric (data_path.ts). */
  get fabric(): FabricMirror {
    return this.dataPath.fabric;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(id: string): Entry | undefined {
    return this.#entries.get(id);
  }

  /** The handler that frames numbered `n` are for. */
  byNumber(n: number): HandlerRef | undefined {
    return this.#byNumber.get(n);
  }

  entries(): IterableIterator<[string, Entry]> {
    return this.#entries.entries();
  }

  values(): IterableIterator<Entry> {
    return this.#entries.values();
  }

  /** The handler of this server that already carries one of `spec`'s MACs there, if any. */
  conflicting(spec: HandlerSpec): { entry?: Entry; other: HandlerSpec; mac: string } | undefined {
    const held: { entry?: Entry; other: HandlerSpec }[] = [...this.#entries.values()]
      .map((entry) => ({ entry, other: entry.handler.spec }));
    for (const other of this.#opening.values()) held.push({ other });
    for (const { entry, other } of held) {
      if (other.id === spec.id || other.device !== spec.device || other.role !== spec.role) {
        continue;
      }
      const mac = spec.macs.find((m) => other.macs.includes(m));
      if (mac) return { entry, other, mac };
    }
    return undefined;
  }

  /**
   * Opens a handler's end and indexes it. Throws a VnetError if a MAC is taken here or the
   * device cannot be opened, unless `tolerant` (restoring saved handlers): then the handler
   * starts degraded and retries.
   */
  async open(
    spec: HandlerSpec,
    rest: Omit<Entry, "handler" | "downSince">,
    tolerant = false,
  ): Promise<Entry> {
    if (this.#opening.has(spec.id)) {
      throw new VnetError(`handler ${spec.id} is being opened already`, {
        code: ErrorCode.Refused,
      });
    }
    const taken = this.conflicting(spec);
    if (taken) {
      const other = taken.other;
      throw new VnetError(
        `MAC ${taken.mac} is already carried by handler ${other.id} on ${spec.device} ` +
          `(${spec.role} role): close that handler first, or carry the MAC there`,
        { code: ErrorCode.Refused },
      );
    }
    this.#opening.set(spec.id, spec);
    let handler: HandlerRef;
    try {
      handler = await this.dataPath.open(spec, tolerant);
    } finally {
      this.#opening.delete(spec.id);
    }
    const entry: Entry = { handler, ...rest, downSince: rest.dial || rest.vxlan ? 0 : Date.now() };
    this.#entries.set(spec.id, entry);
    this.#byNumber.set(handler.number, handler);
    return entry;
  }

  /** Forgets and closes a handler; false if there was none. */
  async remove(id: string): Promise<boolean> {
    const entry = this.#entries.get(id);
    if (!entry) return false;
    this.#entries.delete(id);
    this.#byNumber.delete(entry.handler.number);
    await entry.handler.close();
    return true;
  }

  /** A fresh handler id: 8 hex digits, never 0, unused here. */
  newId(): string {
    for (;;) {
      const n = crypto.getRandomValues(new Uint32Array(1))[0];
      const id = n.toString(16).padStart(8, "0");
      if (
        n !== 0 && !this.#entries.has(id) && !this.#opening.has(id) &&
        !this.#byNumber.has(handlerNumber(id))
      ) return id;
    }
  }
}
