// Apache Kafka Java client (kafka-clients 4.x) driver for the client-matrix system tests
// (broker/tests/system/test_client_matrix.py). Compiled with javac at test time against the
// jars in target/kafka-jars/lib (kafka-clients + jackson-databind come from there).
//
// Reads one JSON request on stdin, prints one JSON result on stdout (exit 0), or
// {"error": "..."} (exit 1). Same shapes as the franz-go and kafkajs drivers
// (clients/README.md); bytes are base64, null stays null.
//
//   produce        KafkaProducer (defaults: idempotent, acks=all) with compression.type
//                  -> {"offsets": [[partition, offset], ...]} in input order
//   consume        KafkaConsumer without group.id: assign + seek to 0 (or "start":
//                  {partition: offset}), poll; "max_partition_bytes" makes the fetches small
//                  -> {"records": [{"p", "o", "k", "v", "h", "ts", "tt"}]}
//   group_consume  KafkaConsumer with group.id (classic protocol), subscribe, earliest,
//                  enable.auto.commit=false, commitSync() of what was consumed, close()
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class ClientMatrix {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static byte[] b64(JsonNode n) {
        return n == null || n.isNull() ? null : Base64.getDecoder().decode(n.asText());
    }

    private static String enc(byte[] b) {
        return b == null ? null : Base64.getEncoder().encodeToString(b);
    }

    public static void main(String[] args) throws Exception {
        // stdout carries the JSON result only.
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        System.setOut(System.err);
        JsonNode req = JSON.readTree(System.in.readAllBytes());
        ObjectNode result;
        try {
            switch (req.path("op").asText()) {
                case "produce" -> result = produce(req);
                case "consume" -> result = consume(req, false);
                case "group_consume" -> result = consume(req, true);
                default -> throw new IllegalArgumentException("unknown op " + req.path("op"));
            }
        } catch (Exception e) {
            e.printStackTrace();
            ObjectNode err = JSON.createObjectNode();
            err.put("error", e.toString());
            out.println(JSON.writeValueAsString(err));
            out.flush();
            System.exit(1);
            return;
        }
        out.println(JSON.writeValueAsString(result));
        out.flush();
        System.exit(0);
    }

    private static ObjectNode produce(JsonNode req) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", req.path("bootstrap").asText());
        p.put("client.id", "spate-java-client");
        p.put("compression.type", req.path("codec").asText("none"));
        p.put("linger.ms", "20");
        p.put("request.timeout.ms", "15000");
        p.put("delivery.timeout.ms", "30000");
        p.put("max.block.ms", "20000");
        if (req.has("acks")) {
            int acks = req.get("acks").asInt();
            p.put("acks", acks == -1 ? "all" : Integer.toString(acks));
            if (acks != -1) {
                p.put("enable.idempotence", "false");
            }
        }
        String topic = req.path("topic").asText();
        List<Future<RecordMetadata>> futures = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (JsonNode r : req.path("records")) {
                RecordHeaders headers = new RecordHeaders();
                for (JsonNode h : r.path("h")) {
                    headers.add(new RecordHeader(h.path("k").asText(), b64(h.get("v"))));
                }
                futures.add(producer.send(new ProducerRecord<>(topic, r.path("p").asInt(),
                        r.path("ts").asLong(), b64(r.get("k")), b64(r.get("v")), headers)));
            }
            producer.flush();
            ArrayNode offsets = JSON.createArrayNode();
            for (Future<RecordMetadata> f : futures) {
                RecordMetadata md = f.get();
                offsets.addArray().add(md.partition()).add(md.offset());
            }
            ObjectNode res = JSON.createObjectNode();
            res.set("offsets", offsets);
            return res;
        }
    }

    private static ObjectNode consume(JsonNode req, boolean group) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", req.path("bootstrap").asText());
        p.put("client.id", "spate-java-client");
        p.put("request.timeout.ms", "15000");
        p.put("default.api.timeout.ms", "20000");
        p.put("fetch.max.wait.ms", "500");
        p.put("enable.auto.commit", "false");
        String topic = req.path("topic").asText();
        int count = req.path("count").asInt();
        long deadline = System.currentTimeMillis() + req.path("timeout_ms").asLong(30000);
        if (group) {
            p.put("group.id", req.path("group").asText());
            p.put("auto.offset.reset", "earliest");
            p.put("session.timeout.ms", "10000");
            p.put("heartbeat.interval.ms", "1000");
        } else {
            p.put("auto.offset.reset", "none");
        }
        int maxBytes = req.path("max_partition_bytes").asInt(0);
        if (maxBytes > 0) {
            p.put("max.partition.fetch.bytes", Integer.toString(maxBytes));
            p.put("fetch.max.bytes", Integer.toString(4 * maxBytes));
        }
        ArrayNode records = JSON.createArrayNode();
        try (KafkaConsumer<byte[], byte[]> consumer =
                new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            if (group) {
                consumer.subscribe(List.of(topic));
            } else {
                List<TopicPartition> tps = new ArrayList<>();
                for (JsonNode n : req.path("partitions")) {
                    tps.add(new TopicPartition(topic, n.asInt()));
                }
                consumer.assign(tps);
                for (TopicPartition tp : tps) {
                    consumer.seek(tp, req.path("start").path(Integer.toString(tp.partition()))
                            .asLong(0));
                }
            }
            long extraUntil = -1;
            while (true) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    ObjectNode o = records.addObject();
                    o.put("p", r.partition());
                    o.put("o", r.offset());
                    o.put("k", enc(r.key()));
                    o.put("v", enc(r.value()));
                    ArrayNode hs = o.putArray("h");
                    for (Header h : r.headers()) {
                        hs.addObject().put("k", h.key()).put("v", enc(h.value()));
                    }
                    o.put("ts", r.timestamp());
                    o.put("tt", r.timestampType().id);
                }
                long now = System.currentTimeMillis();
                if (records.size() >= count && extraUntil < 0) {
                    extraUntil = now + 500;
                }
                if (extraUntil >= 0 && now >= extraUntil) {
                    break;
                }
                if (now > deadline) {
                    throw new IllegalStateException("consumed " + records.size() + " of " + count
                            + " records before the timeout");
                }
            }
            if (group) {
                consumer.commitSync(Duration.ofSeconds(15));
            }
        }
        ObjectNode res = JSON.createObjectNode();
        res.set("records", records);
        return res;
    }
}
