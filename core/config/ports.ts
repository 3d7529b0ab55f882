/** Default UDP ports (docs/protocol.md, "Transport"). Imports nothing: the short commands read them without the schema. */
export const DEFAULT_SERVER_PORT = 4243;
export const DEFAULT_LOADBALANCER_PORT = 4242;
