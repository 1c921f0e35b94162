/**
 * `PcapInjector`: an `Injector` on libpcap's `pcap_inject`, for systems without libnet
 * (`--injector pcap`). One complete Ethernet frame per synchronous FFI call.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { translated } from "./ffi_errors.ts";
import type { Injector } from "./ports.ts";
import { pcap, PCAP_D_OUT, PcapHandle } from "../../ffi/libpcap.ts";
import { structs } from "../../ffi/layout.ts";
import { interfaceMtu } from "./sysfs.ts";

/** Injects with libpcap (`pcap_inject`) on a handle that captures nothing. */
export class PcapInjector implements Injector {
  readonly mtu: number;
  readonly #handle: PcapHandle;
  readonly #inject = pcap().pcap_inject;

  /** Opens `device` for injecting; a VnetError saying why if it cannot. */
  constructor(readonly device: string) {
    this.#handle = translated(() => openSendOnly(device));
    this.mtu = interfaceMtu(device);
  }

  inject(frame: Uint8Array): boolean {
    if (this.#handle.closed) return false;
    return this.#inject(this.#handle.pointer, frame, BigInt(frame.length)) >= 0;
  }

  lastError(): string {
    return this.#handle.lastError().trim();
  }

  close(): void {
    this.#handle.close();
  }
}

/** An activated pcap handle on `device` that sends and keeps nothing of what it could capture. */
function openSendOnly(device: string): PcapHandle {
  const lib = pcap();
  using stack = new DisposableStack();
  const h = stack.use(PcapHandle.create(device, "injecting on"));
  const p = h.pointer;
  // This handle only sends: keep its ring tiny and make the kernel keep nothing for it.
  h.check("pcap_set_snaplen", lib.pcap_set_snaplen(p, 64));
  h.check("pcap_set_buffer_size", lib.pcap_set_buffer_size(p, 64 * 1024));
  h.check("pcap_activate", lib.pcap_activate(p));
  lib.pcap_setdirection(p, PCAP_D_OUT); // best effort: fewer frames reach the filter
  setDropAllFilter(h);
  stack.move();
  return h;
}

/** Installs the one-instruction BPF program `ret #0` (accept nothing) on a pcap handle. */
function setDropAllFilter(h: PcapHandle): void {
  // BPF_RET|BPF_K (0x06), k = 0, in host byte order, like the kernel and libpcap expect
  const insn = new ArrayBuffer(structs.bpf_insn.size);
  new DataView(insn).setUint16(structs.bpf_insn.offsets.code, 0x06, true);
  const prog = new DataView(new ArrayBuffer(structs.bpf_program.size));
  prog.setUint32(structs.bpf_program.offsets.bf_len, 1, true);
  prog.setBigUint64(
    structs.bpf_program.offsets.bf_insns,
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(insn))),
    true,
  );
  const rc = pcap().pcap_setfilter(h.pointer, new Uint8Array(prog.buffer));
  if (rc < 0 || insn.byteLength === 0) { // (keeps `insn` alive across the call)
    throw new VnetError(`libpcap cannot set a filter on '${h.device}': ${h.lastError()}`, {
      code: ErrorCode.System,
    });
  }
}
