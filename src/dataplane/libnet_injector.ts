/**
 * `LibnetInjector`: the portable `Injector`, on libnet (`LIBNET_LINK_ADV`). The default where
 * there is no Linux packet socket (packet_injector.ts is the default on Linux, `--injector libnet`
 * chooses this one there). One complete Ethernet frame per synchronous FFI call; the system
 * refuses frames larger than the interface allows.
 */
import type { Injector } from "./ports.ts";
import { libnet, LibnetHandle } from "../../ffi/libnet.ts";
import { dropAllReceived } from "../../ffi/libc.ts";
import { interfaceMtu } from "./sysfs.ts";
import { translated } from "./ffi_errors.ts";

/** Injects with libnet (`libnet_init(LIBNET_LINK_ADV)` + `libnet_adv_write_link`). */
export class LibnetInjector implements Injector {
  readonly mtu: number;
  readonly #handle: LibnetHandle;
  readonly #write = libnet().libnet_adv_write_link;

  /** Opens `device` for injecting; a VnetError saying why if it cannot. */
  constructor(readonly device: string) {
    this.#handle = translated(() => {
      using stack = new DisposableStack();
      const h = stack.use(LibnetHandle.open(device));
      // libnet's Linux packet socket is ETH_P_ALL and unbound: without this it would be handed
      // (and drop) a copy of every frame on every interface of the host.
      dropAllReceived(libnet().libnet_getfd(h.pointer));
      stack.move();
      return h;
    });
    this.mtu = interfaceMtu(device);
  }

  inject(frame: Uint8Array): boolean {
    if (this.#handle.closed) return false;
    return this.#write(this.#handle.pointer, frame, frame.length) !== -1;
  }

  lastError(): string {
    return this.#handle.lastError().trim();
  }

  close(): void {
    this.#handle.close();
  }
}
