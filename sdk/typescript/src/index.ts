/**
 * @nimbus/nimbus — the TypeScript SDK of the Nimbus gateway.
 *
 * Sessions (`nimbus.sessions`), the stdio channel (`nimbus.stdio.attach`),
 * files (`nimbus.files`) and CDP URLs (`nimbus.cdp`). Runs on Node ≥ 20
 * and in browsers.
 */
export { Nimbus, type NimbusOptions, type ConnectRef } from "./client.js";
export { Sessions, SessionList, SessionPage } from "./sessions.js";
export {
  attachStdio,
  StdioConnection,
  STDIO_PROTOCOL,
  type StdioAttachOptions,
  type StdioChunk,
  type StdioClose,
  type StdioExit,
  type StdioHello,
} from "./stdio.js";
export {
  FilesClient,
  FILES_PROTOCOL,
  type DownloadOptions,
  type FileInfo,
  type FileListing,
  type FileType,
  type FilesSessionRef,
  type UploadData,
  type UploadOptions,
  type UploadResult,
} from "./files.js";
export { NimbusError, NimbusNetworkError, isNimbusError, type ErrorCode, type Problem } from "./errors.js";
export type { FetchLike, TokenSource } from "./http.js";
export type { WebSocketConstructor, WebSocketLike } from "./websocket.js";
export {
  CHANNELS,
  type Channel,
  type CloseSessionRequest,
  type ConnectUrls,
  type ListSessionsRequest,
  type OpenSessionRequest,
  type RequestOptions,
  type SandboxTarget,
  type ServiceTarget,
  type Session,
  type SessionMetadata,
  type SessionRef,
  type SessionSpec,
  type SessionState,
  type SessionStatus,
  type Target,
  type TargetSnapshot,
} from "./types.js";
