/** Minimal assertions on node:assert (JSR's @std/assert is not reachable from here). */
import { strict } from "node:assert";

export function assert(condition: unknown, message?: string): asserts condition {
  strict.ok(condition, message);
}
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  strict.deepEqual(actual, expected, message);
}
export function assertStrictEquals<T>(actual: T, expected: T, message?: string): void {
  strict.strictEqual(actual, expected, message);
}
export function assertMatch(actual: string, re: RegExp, message?: string): void {
  strict.match(actual, re, message);
}
export function assertThrows(f: () => unknown, re?: RegExp): void {
  strict.throws(f, re ?? Error);
}
export async function assertRejects(f: () => Promise<unknown>, re?: RegExp): Promise<void> {
  await strict.rejects(f, re ?? Error);
}
