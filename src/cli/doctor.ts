/** `vnet doctor`: checks this machine, and the path to a peer, for what a bridge needs. */
import { VnetError } from "../errors.ts";

export function doctorCommand(_args: string[]): Promise<number> {
  return Promise.reject(new VnetError("vnet doctor is not built yet"));
}
