// RBAC denials are reported once per verb and resource until that verb succeeds again: an operator
// gets one line naming what to grant, not one line per retry.

import type { Logger } from "../../common/logger.js";
import type { KubeApiError, Verb } from "./client.js";

export class ForbiddenLog {
  private readonly logged = new Set<string>();

  constructor(
    private readonly logger: Logger,
    /** Log event name, e.g. `leader.forbidden`. */
    private readonly event: string,
    /** What the component does next, appended to the API's message. */
    private readonly whatNext: string,
  ) {}

  report(error: KubeApiError): void {
    const { verb, resource, namespace } = error.request;
    const key = `${verb} ${resource}`;
    if (this.logged.has(key)) return;
    this.logged.add(key);
    this.logger.error(
      { event: this.event, verb, resource, ...(namespace ? { namespace } : {}) },
      `${error.message}; ${this.whatNext}`,
    );
  }

  succeeded(verb: Verb, resource: string): void {
    this.logged.delete(`${verb} ${resource}`);
  }
}
