// How the agent ends: one error type with a closed set of exit codes, mapped
// to the process exit code by the CLI.

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_CONFIG = 2;
export const EXIT_CREDENTIAL_REJECTED = 3;

export type ExitCode = typeof EXIT_OK | typeof EXIT_INTERNAL | typeof EXIT_CONFIG | typeof EXIT_CREDENTIAL_REJECTED;

export class AgentError extends Error {
  override name = "AgentError";
  readonly exitCode: ExitCode;
  constructor(exitCode: ExitCode, message: string) {
    super(message);
    this.exitCode = exitCode;
  }
}
