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
/** What a thrown error must match: its text, or its class. */
type Expected<E> = RegExp | (abstract new (...args: never[]) => E);

/** Asserts that `f` throws an error matching `expected`, and returns it. */
export function assertThrows<E extends Error = Error>(f: () => unknown, expected?: Expected<E>): E {
  let thrown: unknown = undefined;
  let threw = false;
  try {
    f();
  } catch (e) {
    threw = true;
    thrown = e;
  }
  strict.ok(threw, "expected a throw, nothing was thrown");
  strict.throws(() => {
    throw thrown;
  }, expected ?? Error);
  return thrown as E;
}

/** Asserts that `f` rejects with an error matching `expected`, and returns it. */
export async function assertRejects<E extends Error = Error>(
  f: () => Promise<unknown>,
  expected?: Expected<E>,
): Promise<E> {
  let thrown: unknown = undefined;
  let threw = false;
  try {
    await f();
  } catch (e) {
    threw = true;
    thrown = e;
  }
  strict.ok(threw, "expected a rejection, the promise resolved");
  strict.throws(() => {
    throw thrown;
  }, expected ?? Error);
  return thrown as E;
}
