#!/usr/bin/env node
// kafkajs through a cutover, for proto-tests/cutover_clients.rs:
//
//   NODE_PATH=$KLINK_NODE_PATH node ledger.js produce --bootstrap B --topic T \
//       --seconds S --pace N
//   NODE_PATH=$KLINK_NODE_PATH node ledger.js consume --bootstrap B --topic T \
//       --group G --seconds S
//
// Prints STARTED once connected, then one JSON line at the end:
//   produce: {"acked": [[topic, partition, n, unix_s], ...], "failed": F, "errors": [...]}
//     (values are "kafkajs:N", one record per send, one send at a time so that a retry cannot reorder)
//   consume: {"records": [[partition, offset, value], ...], "errors": [...]}
//     (a group member committing what it handed over after every batch; it
//     keeps going past --seconds while records still come, 60 s more at most)
'use strict'

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'

const { Kafka, logLevel, Partitioners } = require('kafkajs')

function parseArgs(argv) {
  const o = { command: argv[0], seconds: 6, pace: 200 }
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    o[key] = argv[i + 1]
  }
  o.seconds = parseFloat(o.seconds)
  o.pace = parseFloat(o.pace)
  return o
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// Errors after which kafkajs rejoins the group when they reach it.
const REJOIN = new Set(['REBALANCE_IN_PROGRESS', 'ILLEGAL_GENERATION', 'UNKNOWN_MEMBER_ID'])

// The report, then exit once it is written (kafkajs may hold timers open).
const finish = report => process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0))

// How to reach klink, from the environment (the security tests), as
// routing.py's security() reads it: KLINK_CLIENT_CA (TLS, trusting this CA),
// KLINK_CLIENT_CERT/_KEY (mTLS), KLINK_CLIENT_USER, _PASSWORD and
// _MECHANISM (a SASL login, SCRAM-SHA-512 by default); plaintext otherwise.
function security() {
  const env = process.env
  const fs = require('fs')
  const out = {}
  if (env.KLINK_CLIENT_CA) {
    out.ssl = { ca: [fs.readFileSync(env.KLINK_CLIENT_CA, 'utf8')] }
    if (env.KLINK_CLIENT_CERT) {
      out.ssl.cert = fs.readFileSync(env.KLINK_CLIENT_CERT, 'utf8')
      out.ssl.key = fs.readFileSync(env.KLINK_CLIENT_KEY, 'utf8')
    }
  }
  if (env.KLINK_CLIENT_USER) {
    out.sasl = {
      mechanism: (env.KLINK_CLIENT_MECHANISM || 'SCRAM-SHA-512').toLowerCase(),
      username: env.KLINK_CLIENT_USER,
      password: env.KLINK_CLIENT_PASSWORD || '',
    }
  }
  return out
}

function kafka(args, clientId) {
  return new Kafka({
    ...security(),
    clientId,
    brokers: [args.bootstrap],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 2000 },
  })
}

async function produce(args) {
  const producer = kafka(args, 'ledger-kafkajs').producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  })
  await producer.connect()
  console.log('STARTED')
  const acked = []
  const errors = []
  let failed = 0
  let sent = 0
  let inFlight = 0
  const began = Date.now()
  const send = n => {
    inFlight++
    producer
      .send({ topic: args.topic, acks: -1, messages: [{ key: `k${n}`, value: `kafkajs:${n}` }] })
      .then(meta => {
        for (const m of meta) acked.push([m.topicName, m.partition, n, Date.now() / 1000])
      })
      .catch(e => {
        failed++
        if (errors.length < 10) errors.push(String(e && e.message))
      })
      .finally(() => inFlight--)
  }
  while (Date.now() - began < args.seconds * 1000) {
    const allowed = ((Date.now() - began) / 1000) * args.pace
    while (sent < allowed && inFlight < 1) send(sent++)
    await sleep(2)
  }
  const flushBy = Date.now() + 30000
  while (inFlight > 0 && Date.now() < flushBy) await sleep(10)
  await Promise.race([producer.disconnect(), sleep(10000)])
  finish({ acked, failed, unflushed: inFlight, errors })
}

async function consume(args) {
  const consumer = kafka(args, 'ledger-kafkajs-consumer').consumer({
    groupId: args.group,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 10,
    allowAutoTopicCreation: false,
    retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 2000 },
  })
  const records = []
  const errors = []
  let crashed = null
  let lastGot = Date.now()
  consumer.on(consumer.events.CRASH, e => {
    // kafkajs restarts the consumer itself after a retriable crash (a
    // NOT_COORDINATOR while committing across a flip is one): only a
    // crash it will not restart from ends the run.
    const error = e.payload.error
    errors.push(`crash (restart: ${e.payload.restart}): ${error && error.message}`)
    if (!e.payload.restart) crashed = error
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [args.topic], fromBeginning: true })
  await consumer.run({
    autoCommit: true,
    autoCommitInterval: 200,
    eachBatch: async ({ batch, resolveOffset, heartbeat, commitOffsetsIfNecessary }) => {
      for (const m of batch.messages) {
        records.push([batch.partition, parseInt(m.offset, 10), m.value.toString()])
        resolveOffset(m.offset)
      }
      if (batch.messages.length > 0) lastGot = Date.now()
      // A commit or heartbeat refused across a flip (NOT_COORDINATOR) is
      // retried by the next batch; thrown, it would crash the consumer.
      // What asks for a rejoin (the coordinator restarted and forgot the
      // member, or a rebalance) goes to kafkajs, which rejoins: swallowed,
      // the member kept a dead generation and stopped getting records.
      try {
        await commitOffsetsIfNecessary()
        await heartbeat()
      } catch (e) {
        if (errors.length < 20) errors.push(`commit/heartbeat: ${e && e.message}`)
        if (e && REJOIN.has(e.type)) throw e
      }
    },
  })
  console.log('STARTED')
  const began = Date.now()
  const deadline = began + args.seconds * 1000
  while (!crashed && (Date.now() < deadline || (Date.now() - lastGot < 2000 && Date.now() < deadline + 60000))) {
    await sleep(50)
  }
  // A disconnect caught in a restart can wait forever: bounded.
  await Promise.race([consumer.disconnect(), sleep(10000)])
  finish({ records, errors })
}

const args = parseArgs(process.argv.slice(2))
const run = { produce, consume }[args.command]
if (!run) {
  process.stderr.write(`ledger.js: unknown command ${args.command}\n`)
  process.exit(64)
}
run(args).catch(e => {
  process.stderr.write(`ledger.js: ${e && e.stack}\n`)
  process.exit(1)
})
