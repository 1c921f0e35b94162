/** A Logger that keeps the WARN lines a test looks for, and drops the rest. */
import { type Fields, Logger } from "../../src/log.ts";

export class Warnings extends Logger {
  constructor(readonly lines: { msg: string; fields: Fields }[] = []) {
    super();
  }
  override with(): Logger {
    return this;
  }
  override info(): void {}
  override debug(): void {}
  override warn(msg: string, fields: Fields = {}): void {
    this.lines.push({ msg, fields });
  }
}
