#!/usr/bin/env node
// Kafka client scenario for klink's protocol tests, kafkajs variant.
//
//   NODE_PATH=$KLINK_NODE_PATH node scenario.js --bootstrap 127.0.0.1:PORT \
//       --topic T --group G --records 10000 --partitions 3 [--timeout-s 120]
//
// Same scenario and JSON output as scenario.py (see README.md in this directory).
// One JSON line on stdout; logs on stderr. Exit 0 when the scenario ran to
// completion, 1 on an exception, 2 on the overall timeout (a JSON line with
// "error" set is still printed when possible).
'use strict'

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'

const RUN1_FRACTION = 0.4
const SESSION_TIMEOUT_MS = 6000
const HEARTBEAT_MS = 1000
const FETCH_WAIT_MS = 10
const CAUGHT_UP_GRACE_MS = 1000
const PRODUCE_CHUNK = 500

const started = Date.now()

function log(...a) {
  process.stderr.write(`${new Date().toISOString()} scenario.js: ${a.join(' ')}\n`)
}

function parseArgs(argv) {
  const o = { records: 10000, partitions: 3, timeoutS: 120, logLevel: 'WARN', batching: 'one' }
  const names = {
    '--bootstrap': 'bootstrap', '--topic': 'topic', '--group': 'group', '--records': 'records',
    '--partitions': 'partitions', '--timeout-s': 'timeoutS', '--log-level': 'logLevel',
    '--batching': 'batching',
  }
  for (let i = 0; i < argv.length; i++) {
    let [k, v] = argv[i].split(/=(.*)/s)
    if (!(k in names)) throw new Error(`unknown argument ${argv[i]}`)
    if (v === undefined) v = argv[++i]
    if (v === undefined) throw new Error(`missing value for ${k}`)
    o[names[k]] = v
  }
  for (const k of ['bootstrap', 'topic', 'group']) if (!o[k]) throw new Error(`--${k} is required`)
  o.records = parseInt(o.records, 10)
  o.partitions = parseInt(o.partitions, 10)
  o.timeoutS = parseFloat(o.timeoutS)
  if (!['one', 'default'].includes(o.batching)) throw new Error('--batching is one or default')
  return o
}

class ScenarioTimeout extends Error {}

const sleep = ms => new Promise(r => setTimeout(r, ms))

function parseRecord(key, value) {
  if (key == null || value == null) return null
  const k = key.toString()
  const s = value.toString()
  if (!/^-?\d+$/.test(s)) return null
  const v = parseInt(s, 10)
  return k === `k${v}` ? v : null
}

function newRun(name) {
  return {
    name, clientId: null, consumed: 0, firstOffsets: new Map(), lastOffsets: new Map(),
    orderViolations: 0, orderViolationSamples: [], committed: new Map(), commitErrors: [], committedReadback: null,
  }
}

const mapJson = m => Object.fromEntries([...m.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), v]))

function runJson(r) {
  const d = {
    client_id: r.clientId,
    consumed: r.consumed,
    first_offsets: mapJson(r.firstOffsets),
    last_offsets: mapJson(r.lastOffsets),
    committed: mapJson(r.committed),
    commit_errors: r.commitErrors,
    order_violations: r.orderViolations,
    order_violation_samples: r.orderViolationSamples,
  }
  if (r.committedReadback) d.committed_readback = mapJson(r.committedReadback)
  return d
}

async function main() {
  let args
  try {
    args = parseArgs(process.argv.slice(2))
  } catch (e) {
    log(`usage error: ${e.message}`)
    process.exit(64)
  }
  const { Kafka, logLevel, Partitioners } = require('kafkajs')
  const kjsVersion = require('kafkajs/package.json').version
  log(`kafkajs ${kjsVersion}`)

  const R = args.records
  const N = args.partitions
  const deadline = started + args.timeoutS * 1000
  const left = () => deadline - Date.now()
  const check = what => { if (left() <= 0) throw new ScenarioTimeout(`timeout while ${what}`) }

  const st = {
    producedOk: 0, deliveryErrors: 0, deliveryErrorSamples: [], delivered: new Map(),
    endOffsets: new Map(), seen: new Set(), duplicates: 0, badRecords: 0, deliveryMismatch: 0,
    runs: [newRun('run1'), newRun('run2')], phaseS: {}, timedOut: null,
  }

  const level = logLevel[String(args.logLevel).toUpperCase()] ?? logLevel.WARN
  const logCreator = () => ({ namespace, level: lvl, label, log: entry }) => {
    const { message, timestamp, ...extra } = entry
    process.stderr.write(`${timestamp} kafkajs ${label} [${namespace}] ${message} ${JSON.stringify(extra)}\n`)
  }
  const kafka = new Kafka({
    clientId: 'klink-scenario-kafkajs',
    brokers: [args.bootstrap],
    logLevel: level,
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
  })

  const phase = async (name, fn) => {
    const t = Date.now()
    log(`phase ${name}: start`)
    try {
      return await fn()
    } finally {
      st.phaseS[name] = (Date.now() - t) / 1000
      log(`phase ${name}: ${st.phaseS[name]}s`)
    }
  }

  const onRecord = (run, partition, offset, key, value) => {
    run.consumed++
    const last = run.lastOffsets.get(partition)
    if (last !== undefined && offset <= last) {
      run.orderViolations++
      if (run.orderViolationSamples.length < 5) run.orderViolationSamples.push([partition, last, offset])
      log(`${run.name}: partition ${partition} offset ${offset} after ${last}`)
    }
    run.lastOffsets.set(partition, offset)
    if (!run.firstOffsets.has(partition)) run.firstOffsets.set(partition, offset)
    const v = parseRecord(key, value)
    if (v === null || v < 0 || v >= R) { st.badRecords++; return }
    if (st.seen.has(v)) st.duplicates++
    st.seen.add(v)
    const d = st.delivered.get(v)
    if (d && (d[0] !== partition || d[1] !== offset)) st.deliveryMismatch++
  }

  // End offset per partition from the delivery reports: highest offset + 1.
  const deliveredEnds = () => {
    const m = new Map()
    for (const [p, o] of st.delivered.values()) if (o + 1 > (m.get(p) ?? 0)) m.set(p, o + 1)
    return m
  }
  // max(ListOffsets latest, delivery-report end), so that a broker whose ListOffsets
  // under-reports cannot stop run 2 early.
  const effectiveEnds = () => {
    const m = new Map(st.endOffsets)
    for (const [p, o] of deliveredEnds()) m.set(p, Math.max(m.get(p) ?? 0, o))
    return m
  }

  let run2Ends = null
  const run2Done = (run2, since) => {
    if (st.seen.size >= R) return [true, since]
    if (run2Ends === null) run2Ends = effectiveEnds()
    const ends = run2Ends
    if (ends.size === 0) return [false, null]
    const c1 = st.runs[0].committed
    for (let p = 0; p < N; p++) {
      const end = ends.get(p)
      if (end === undefined) return [false, null]
      const pos = run2.lastOffsets.has(p) ? run2.lastOffsets.get(p) + 1 : (c1.get(p) ?? 0)
      if (pos < end) return [false, null]
    }
    const now = Date.now()
    if (since === null) return [false, now]
    return [now - since >= CAUGHT_UP_GRACE_MS, since]
  }

  const admin = kafka.admin()

  const createTopic = async () => {
    await admin.connect()
    const created = await admin.createTopics({
      topics: [{ topic: args.topic, numPartitions: N, replicationFactor: 1 }],
      waitForLeaders: false,
      timeout: 10000,
    })
    if (!created) throw new Error(`topic ${args.topic} already exists`)
    for (;;) {
      check('waiting for topic metadata')
      try {
        const md = await admin.fetchTopicMetadata({ topics: [args.topic] })
        const t = md.topics.find(x => x.name === args.topic)
        if (t && t.partitions.length === N &&
            t.partitions.every(p => p.partitionErrorCode === 0 && p.leader >= 0)) return
      } catch (e) {
        log(`fetchTopicMetadata: ${e.message}`)
      }
      await sleep(100)
    }
  }

  const produce = async () => {
    // Wrap the default (Java-compatible murmur2) partitioner to learn each record's
    // partition; per-record offsets are baseOffset + index within the partition's batch.
    const partOf = new Map()
    const createPartitioner = () => {
      const inner = Partitioners.DefaultPartitioner()
      return a => {
        const p = inner(a)
        partOf.set(a.message.value.toString(), p)
        return p
      }
    }
    const producer = kafka.producer({ createPartitioner, allowAutoTopicCreation: false })
    await producer.connect()
    try {
      // One send per [lo, hi): kafkajs turns each send into one batch per
      // partition, so --batching one sends every record as its own batch.
      const sendRange = async (lo, hi) => {
        const messages = []
        for (let i = lo; i < hi; i++) messages.push({ key: `k${i}`, value: `${i}` })
        let res
        try {
          res = await producer.send({ topic: args.topic, messages, acks: -1, timeout: 15000 })
        } catch (e) {
          st.deliveryErrors += hi - lo
          if (st.deliveryErrorSamples.length < 5) st.deliveryErrorSamples.push(`${e.name}: ${e.message}`)
          return
        }
        const byPart = new Map()
        for (let i = lo; i < hi; i++) {
          const p = partOf.get(String(i))
          if (!byPart.has(p)) byPart.set(p, [])
          byPart.get(p).push(i)
        }
        for (const r of res) {
          const vals = byPart.get(r.partition) || []
          if (r.errorCode !== 0) {
            st.deliveryErrors += vals.length
            if (st.deliveryErrorSamples.length < 5) st.deliveryErrorSamples.push(`partition ${r.partition}: error code ${r.errorCode}`)
            continue
          }
          const base = parseInt(r.baseOffset, 10)
          vals.forEach((v, idx) => {
            st.producedOk++
            if (base >= 0) st.delivered.set(v, [r.partition, base + idx])
          })
          byPart.delete(r.partition)
        }
        for (const [p, vals] of byPart) {
          st.deliveryErrors += vals.length
          if (st.deliveryErrorSamples.length < 5) st.deliveryErrorSamples.push(`partition ${p}: no produce response`)
        }
      }
      const perSend = args.batching === 'one' ? 1 : PRODUCE_CHUNK
      for (let lo = 0; lo < R; lo += PRODUCE_CHUNK) {
        check('producing')
        const sends = []
        for (let from = lo; from < Math.min(R, lo + PRODUCE_CHUNK); from += perSend) {
          sends.push(sendRange(from, Math.min(R, from + perSend)))
        }
        await Promise.all(sends)
      }
    } finally {
      await producer.disconnect()
    }
  }

  const endOffsets = async () => {
    const offs = await admin.fetchTopicOffsets(args.topic)
    const m = new Map()
    for (const o of offs) m.set(o.partition, parseInt(o.high, 10))
    return m
  }

  const consume = async (run, first) => {
    run.clientId = `klink-scenario-kafkajs-${run.name}`
    const k = new Kafka({
      clientId: run.clientId,
      brokers: [args.bootstrap],
      logLevel: level,
      logCreator,
      connectionTimeout: 5000,
      requestTimeout: 15000,
      retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
    })
    const consumer = k.consumer({
      groupId: args.group,
      sessionTimeout: SESSION_TIMEOUT_MS,
      heartbeatInterval: HEARTBEAT_MS,
      rebalanceTimeout: 10000,
      maxWaitTimeInMs: FETCH_WAIT_MS,
      allowAutoTopicCreation: false,
      retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
    })
    const target = Math.ceil(R * RUN1_FRACTION)
    let stopped = false
    let crashed = null
    consumer.on(consumer.events.CRASH, e => {
      crashed = e.payload.error
      log(`${run.name}: consumer crashed: ${crashed && crashed.message}`)
    })
    try {
      await consumer.connect()
      await consumer.subscribe({ topics: [args.topic], fromBeginning: true })
      await consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
          for (const m of batch.messages) {
            if (stopped) return // not handed to the application: neither counted nor committed
            onRecord(run, batch.partition, parseInt(m.offset, 10), m.key, m.value)
            resolveOffset(m.offset)
            if (first && run.consumed >= target) stopped = true
          }
          await heartbeat()
        },
      })
      let since = null
      for (;;) {
        if (crashed) throw crashed
        if (first && stopped) break
        if (!first) {
          const [done, s] = run2Done(run, since)
          since = s
          if (done) break
        }
        if (left() <= 0) {
          st.timedOut = run.name
          throw new ScenarioTimeout(`timeout in ${run.name} after ${run.consumed} records`)
        }
        await sleep(20)
      }
      stopped = true
      for (const [p, o] of run.lastOffsets) run.committed.set(p, o + 1)
      if (run.committed.size > 0) {
        const tps = [...run.committed.entries()].sort((a, b) => a[0] - b[0])
          .map(([partition, o]) => ({ topic: args.topic, partition, offset: String(o) }))
        try {
          await consumer.commitOffsets(tps)
        } catch (e) {
          run.commitErrors.push(`${e.name}: ${e.message}`)
        }
        const back = await admin.fetchOffsets({ groupId: args.group, topics: [args.topic] })
        run.committedReadback = new Map()
        for (const t of back) {
          for (const p of t.partitions) {
            const o = parseInt(p.offset, 10)
            if (o >= 0) run.committedReadback.set(p.partition, o)
          }
        }
      }
      log(`${run.name}: consumed ${run.consumed}, committed ${JSON.stringify(mapJson(run.committed))}`)
    } finally {
      stopped = true
      await consumer.disconnect()
    }
  }

  let error = null
  let code = 0
  try {
    await phase('create_topic', createTopic)
    await phase('produce', produce)
    st.endOffsets = await phase('end_offsets', endOffsets)
    log(`end offsets ${JSON.stringify(mapJson(st.endOffsets))}`)
    await phase('run1', () => consume(st.runs[0], true))
    await phase('run2', () => consume(st.runs[1], false))
  } catch (e) {
    if (e instanceof ScenarioTimeout) {
      error = `timeout: ${e.message}`
      code = 2
      st.timedOut = st.timedOut || true
    } else {
      error = `${e.name}: ${e.message}`
      code = 1
      log(e.stack)
    }
  }
  try { await admin.disconnect() } catch (e) { log(`admin.disconnect: ${e.message}`) }

  const [run1, run2] = st.runs
  const ends = effectiveEnds()
  let resumed = true
  for (let p = 0; p < N; p++) {
    const start = run1.committed.get(p) ?? 0
    const end = ends.get(p)
    const f = run2.firstOffsets.get(p)
    if (end !== undefined && start >= end) {
      if (f !== undefined) resumed = false
    } else if (f !== start) {
      resumed = false
    }
  }
  const missing = []
  for (let v = 0; v < R; v++) if (!st.seen.has(v)) missing.push(v)
  const out = {
    lib: 'kafkajs',
    produced: st.producedOk,
    delivery_errors: st.deliveryErrors,
    delivery_error_samples: st.deliveryErrorSamples,
    delivery_offsets_known: st.delivered.size,
    end_offsets: mapJson(st.endOffsets),
    delivered_end_offsets: mapJson(deliveredEnds()),
    run1: runJson(run1),
    run2: runJson(run2),
    distinct_values: st.seen.size,
    missing_count: missing.length,
    missing: missing.slice(0, 20),
    duplicates: st.duplicates,
    bad_records: st.badRecords,
    delivery_mismatch: st.deliveryMismatch,
    resumed_exactly: resumed,
    order_ok: run1.orderViolations === 0 && run2.orderViolations === 0,
    phase_s: st.phaseS,
    elapsed_s: (Date.now() - started) / 1000,
    timed_out: st.timedOut,
    error,
  }
  process.stdout.write(JSON.stringify(out) + '\n')
  if (error) log(`FAILED: ${error}`)
  return code
}

// Hard stop in case a library call hangs past the deadline (e.g. a disconnect that never returns).
const hardTimer = (() => {
  const i = process.argv.indexOf('--timeout-s')
  const s = i >= 0 ? parseFloat(process.argv[i + 1]) : 120
  return setTimeout(() => {
    log('FAILED: hard timeout (scenario did not finish within --timeout-s + 30s)')
    process.exit(2)
  }, ((Number.isFinite(s) ? s : 120) + 30) * 1000)
})()
hardTimer.unref()

main().then(code => {
  process.exitCode = code
  // kafkajs may leave timers behind; do not wait for them
  setImmediate(() => process.exit(code))
}, e => {
  log(`FAILED: ${e && e.stack}`)
  process.exit(1)
})
