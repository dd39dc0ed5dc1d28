/** The Hono environment of the server's routes: per-request variables set by the app's middleware. */

export interface AppEnv {
  Variables: {
    /** `X-Request-Id` from the client, or one generated; echoed in the response and prefixed to engine request ids. */
    requestId: string;
  };
}
