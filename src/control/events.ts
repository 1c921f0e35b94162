/** Recent link events of a server, newest last, for the status page and `list`. */

export interface LinkEvent {
  /** ISO time. */
  at: string;
  kind:
    | "connect"
    | "disconnect"
    | "reconnect"
    | "refused"
    | "handler-up"
    | "handler-down"
    | "orphan";
  remote: string;
  reason?: string;
  handler?: string;
}

const KEEP = 100;

export class EventLog {
  #events: LinkEvent[] = [];

  add(event: Omit<LinkEvent, "at">): void {
    this.#events.push({ at: new Date().toISOString(), ...event });
    if (this.#events.length > KEEP * 2) this.#events = this.#events.slice(-KEEP);
  }

  recent(): LinkEvent[] {
    return this.#events.slice(-KEEP);
  }
}
