/**
 * `Injector`s: `LibnetInjector` (libnet, LIBNET_LINK_ADV, the default) and `PcapInjector`
 * (`pcap_inject`, for systems without libnet). Both write one complete Ethernet frame per
 * synchronous FFI call; the system refuses frames larger than the interface allows.
 */
import { VnetError } from "../errors.ts";
import type { Injector } from "./ports.ts";
import { libnet, LibnetHandle } from "../../ffi/libnet.ts";
import { pcap, PCAP_D_OUT, PcapHandle } from "../../ffi/libpcap.ts";
import { dropAllReceived } from "../../ffi/libc.ts";

export const DEFAULT_MTU = 1500;

/** The interface MTU: `/sys/class/net/DEV/mtu` on Linux, else `DEFAULT_MTU`. */
export function interfaceMtu(device: string): number {
  if (Deno.build.os === "linux" && !/[/\0]/.test(device) && device !== "." && device !== "..") {
    try {
      const mtu = parseInt(Deno.readTextFileSync(`/sys/class/net/${device}/mtu`).trim(), 10);
      if (Number.isInteger(mtu) && mtu > 0) return mtu;
    } catch {
      // not readable: fall back
    }
  }
  return DEFAULT_MTU;
}

/** Injects with libnet (`libnet_init(LIBNET_LINK_ADV)` + `libnet_adv_write_link`). */
export class LibnetInjector implements Injector {
  readonly device: string;
  readonly mtu: number;
  readonly #handle: LibnetHandle;
  readonly #l: Deno.PointerObject;
  readonly #write: ReturnType<typeof libnet>["libnet_adv_write_link"];

  constructor(device: string) {
    this.device = device;
    this.#handle = LibnetHandle.open(device);
    this.#l = this.#handle.pointer;
    this.#write = libnet().libnet_adv_write_link;
    this.mtu = interfaceMtu(device);
    // libnet's Linux packet socket is ETH_P_ALL and unbound: without this it would be handed
    // (and drop) a copy of every frame on every interface of the host.
    dropAllReceived(libnet().libnet_getfd(this.#l));
  }

  inject(frame: Uint8Array): boolean {
    if (this.#handle.closed) return false;
    return this.#write(this.#l, frame, frame.length) !== -1;
  }

  lastError(): string {
    return this.#handle.lastError().trim();
  }

  close(): void {
    this.#handle.close();
  }
}

/** Injects with libpcap (`pcap_inject`) on a handle that captures nothing. */
export class PcapInjector implements Injector {
  readonly device: string;
  readonly mtu: number;
  readonly #handle: PcapHandle;
  readonly #p: Deno.PointerObject;
  readonly #inject: ReturnType<typeof pcap>["pcap_inject"];

  constructor(device: string) {
    this.device = device;
    const lib = pcap();
    const h = PcapHandle.create(device, "injecting on");
    try {
      const p = h.pointer;
      // This handle only sends: keep its ring tiny and make the kernel keep nothing for it.
      h.check("pcap_set_snaplen", lib.pcap_set_snaplen(p, 64));
      h.check("pcap_set_buffer_size", lib.pcap_set_buffer_size(p, 64 * 1024));
      h.check("pcap_activate", lib.pcap_activate(p));
      lib.pcap_setdirection(p, PCAP_D_OUT); // best effort: fewer frames reach the filter
      setDropAllFilter(h);
    } catch (e) {
      h.close();
      throw e;
    }
    this.#handle = h;
    this.#p = h.pointer;
    this.#inject = lib.pcap_inject;
    this.mtu = interfaceMtu(device);
  }

  inject(frame: Uint8Array): boolean {
    if (this.#handle.closed) return false;
    return this.#inject(this.#p, frame, BigInt(frame.length)) >= 0;
  }

  lastError(): string {
    return this.#handle.lastError().trim();
  }

  close(): void {
    this.#handle.close();
  }
}

/** Installs the one-instruction BPF program `ret #0` (accept nothing) on a pcap handle. */
function setDropAllFilter(h: PcapHandle): void {
  // struct bpf_insn { u_short code; u_char jt; u_char jf; bpf_u_int32 k; }: BPF_RET|BPF_K, k = 0
  const insn = new ArrayBuffer(8);
  new Uint16Array(insn)[0] = 0x06; // host byte order, like the kernel/libpcap expect
  // struct bpf_program { u_int bf_len; struct bpf_insn *bf_insns; }
  const prog = new Uint8Array(16);
  new Uint32Array(prog.buffer)[0] = 1;
  new BigUint64Array(prog.buffer)[1] = BigInt(
    Deno.UnsafePointer.value(Deno.UnsafePointer.of(insn)),
  );
  const rc = pcap().pcap_setfilter(h.pointer, prog);
  if (rc < 0 || insn.byteLength !== 8) { // (keeps `insn` alive across the call)
    throw new VnetError(`libpcap cannot set a filter on '${h.device}': ${h.lastError()}`);
  }
}
