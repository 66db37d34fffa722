// Reading storedvalue errors from Node.js: the client is generated at run time from protos/
// (with @grpc/proto-loader), and the google.rpc.Status in the `grpc-status-details-bin`
// trailer is decoded with the vendored third_party/googleapis protos.
//
//   node examples/node/read_errors.js HOST:PORT BEARER_TOKEN CARD_NUMBER
//
// calls TerminalService.GetCard and prints one JSON line: the card, or the error's status
// code, its ErrorInfo (reason, domain, metadata) and the matching ErrorReason enum value.
// Needs `npm install @grpc/grpc-js @grpc/proto-loader` (protobufjs comes with the loader).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const repo = path.resolve(__dirname, '..', '..');
const includeDirs = [path.join(repo, 'protos'), path.join(repo, 'third_party', 'googleapis')];

// The contract: services, messages and the ErrorReason enum.
const definition = protoLoader.loadSync(
  ['storedvalue/v1/terminal_service.proto', 'storedvalue/v1/errors.proto'],
  { includeDirs, keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).storedvalue.v1;

// google.rpc.Status and ErrorInfo, to decode the error details.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => {
  for (const dir of includeDirs) {
    const candidate = path.join(dir, target);
    if (require('fs').existsSync(candidate)) return candidate;
  }
  return target; // google/protobuf/*.proto: protobufjs has them built in
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfo = rpcRoot.lookupType('google.rpc.ErrorInfo');
const ERROR_INFO_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

// The one rule of errors.proto: reason "CARD_LOCKED" is enum value ERROR_REASON_CARD_LOCKED.
const errorReasons = definition['storedvalue.v1.ErrorReason'].type.value;
function reasonEnumValue(reason) {
  const value = errorReasons.find((v) => v.name === `ERROR_REASON_${reason}`);
  return value === undefined ? null : value.number;
}

function errorInfoOf(error) {
  const [bin] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!bin) return null;
  const status = Status.decode(bin);
  const detail = status.details.find((any) => any.type_url === ERROR_INFO_URL);
  return detail ? ErrorInfo.toObject(ErrorInfo.decode(detail.value)) : null;
}

function main() {
  const [address, token, cardNumber] = process.argv.slice(2);
  const client = new v1.TerminalService(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  client.GetCard({ card_number: cardNumber }, metadata, { deadline: Date.now() + 10000 },
    (error, response) => {
      if (!error) {
        console.log(JSON.stringify({ ok: true, card: response.card }));
      } else {
        const info = errorInfoOf(error);
        console.log(JSON.stringify({
          ok: false,
          code: grpc.status[error.code],
          message: error.details,
          reason: info && info.reason,
          domain: info && info.domain,
          metadata: info && info.metadata,
          reason_enum_value: info && reasonEnumValue(info.reason),
        }));
      }
      client.close();
    });
}

main();
