/// The OpenAPI 3 description the daemon serves at /netlox/v1/openapi.json.
public enum OpenAPIDocument {
    public static let json = #"""
{
  "openapi": "3.0.3",
  "info": {"title": "Tandem load balancer API", "version": "1.0.0",
           "description": "LoxiLB-shaped REST API (/netlox/v1) of a Tandem node."},
  "paths": {
    "/netlox/v1/config/loadbalancer": {
      "post": {
        "summary": "Create a load-balancer service",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LoadBalancerEntry"}}}},
        "responses": {
          "200": {"description": "Created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Invalid request; nothing changed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "409": {"description": "The service exists already", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "413": {"description": "Body too large", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/loadbalancer/all": {
      "get": {
        "summary": "List services with endpoints and counters",
        "responses": {"200": {"description": "Services", "content": {"application/json": {"schema": {
          "type": "object", "properties": {"lbAttr": {"type": "array", "items": {"$ref": "#/components/schemas/LoadBalancerEntry"}}}}}}}}
      }
    },
    "/netlox/v1/config/loadbalancer/externalipaddress/{ip}/port/{port}/protocol/{proto}": {
      "delete": {
        "summary": "Delete a service",
        "parameters": [
          {"name": "ip", "in": "path", "required": true, "schema": {"type": "string", "format": "ipv4"}},
          {"name": "port", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1, "maximum": 65535}},
          {"name": "proto", "in": "path", "required": true, "schema": {"type": "string", "enum": ["tcp", "udp"]}}
        ],
        "responses": {
          "200": {"description": "Deleted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Invalid path", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "404": {"description": "No such service", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/conntrack/all": {
      "get": {
        "summary": "List tracked connections",
        "responses": {"200": {"description": "Connections", "content": {"application/json": {"schema": {
          "type": "object", "properties": {"ctAttr": {"type": "array", "items": {"$ref": "#/components/schemas/Conntrack"}}}}}}}}
      }
    },
    "/netlox/v1/config/cistate": {
      "post": {
        "summary": "Set an HA instance's role from outside (kube-loxilb): MASTER claims a new term, BACKUP steps down and stays out of the election",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CIState"}}}},
        "responses": {
          "200": {"description": "Applied", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Invalid state, instance or body; nothing changed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "404": {"description": "Not clustered", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/cistate/all": {
      "get": {
        "summary": "Each HA instance's role on this node",
        "responses": {
          "200": {"description": "Roles", "content": {"application/json": {"schema": {"type": "object", "properties": {
            "Attr": {"type": "array", "items": {"$ref": "#/components/schemas/CIState"}}}}}}},
          "404": {"description": "Not clustered", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/metrics": {
      "get": {
        "summary": "Prometheus metrics (text exposition format 0.0.4)",
        "description": "The node's state as at GET /status, /config/loadbalancer/all, /sync and /cluster, copied in at each scrape (counters keep the node's exact values), plus what is recorded as it happens (HA role changes, takeover durations and failures). Datapath: tandem_datapath_dropped_packets_total{reason}, tandem_datapath_events_total{kind}, tandem_datapath_events_lost_total, ... Services and endpoints: tandem_service_active_connections, tandem_service_{packets,bytes,connections}_total, tandem_endpoint_active_connections, tandem_endpoint_{packets,bytes}_total, tandem_endpoint_in_rotation (1 in rotation, 0 held down), tandem_endpoint_health_transitions_total, tandem_service_no_endpoint_total. Replication: tandem_replication_in_sync, tandem_replication_entries, tandem_replication_lag_{p50,p99,max}_seconds, tandem_replication_<counter>_total, tandem_replication_dropped_messages_total{reason}, tandem_replication_peer_*{peer}. Cluster: tandem_ha_role{instance} (0 BACKUP, 1 MASTER, 2 FAULT), tandem_ha_term{instance}, tandem_cluster_member_state{member,state}, tandem_gossip_<counter>_total, tandem_gossip_dropped_messages_total{reason}, tandem_takeover_duration_seconds (histogram), tandem_takeover_failures_total, tandem_cluster_verdicts_total{event} (endpoint verdict sets received and outdated, host states merged, and applied: a peer's verdict changed this node's datapath). Kernel conntrack sync (conntrack: in the config): tandem_conntrack_replication_* (as tandem_replication_*), tandem_conntrack_source_<counter>_total, tandem_conntrack_sink_<counter>_total, tandem_conntrack_sink_failures_total{reason}, tandem_conntrack_held_back_changes_total, and the gauges tandem_conntrack_publishing, tandem_conntrack_source_entries, tandem_conntrack_sink_held. Replication and cluster series appear only on a clustered node.",
        "responses": {"200": {"description": "Metrics", "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}}
      }
    },
    "/netlox/v1/cluster/services": {
      "get": {
        "summary": "Service sharing: this node's service count and digest, each peer's, whether they agree, last exchange, counters and dropped frames",
        "responses": {
          "200": {"description": "Service sharing status", "content": {"application/json": {"schema": {"type": "object"}}}},
          "404": {"description": "Services not shared", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/endpoint": {
      "post": {
        "summary": "LoxiLB's endpoint object: a probe for one host under a key (name, or hostName_probeType_probePort); created or replaced. An object whose key is a monitored rule endpoint's (IP_tcp_PORT, IP_udp_PORT) supplies that endpoint's probe.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["hostName"],
          "properties": {"hostName": {"type": "string", "format": "ipv4"}, "name": {"type": "string"}, "description": {"type": "string"},
                         "probeType": {"type": "string", "enum": ["tcp", "udp", "http", "https", "ping", "none", "connect-tcp", "connect-udp"]},
                         "probePort": {"type": "integer", "minimum": 0, "maximum": 65535}, "probeReq": {"type": "string"}, "probeResp": {"type": "string"},
                         "probeDuration": {"type": "integer", "minimum": 0, "maximum": 3600}, "inactiveReTries": {"type": "integer", "minimum": 0, "maximum": 100}}}}}},
        "responses": {
          "200": {"description": "Success", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Malformed object; nothing changed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "403": {"description": "Too many objects (4096)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/endpoint/epipaddress/{ip}": {
      "delete": {
        "summary": "Delete an endpoint object: by name, or by host, probe_type and probe_port",
        "parameters": [
          {"name": "ip", "in": "path", "required": true, "schema": {"type": "string", "format": "ipv4"}},
          {"name": "name", "in": "query", "schema": {"type": "string"}},
          {"name": "probe_type", "in": "query", "schema": {"type": "string"}},
          {"name": "probe_port", "in": "query", "schema": {"type": "number"}}
        ],
        "responses": {
          "200": {"description": "Deleted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Malformed path or query", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "404": {"description": "host-notfound: no object with that key", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/config/endpointhoststate": {
      "post": {
        "summary": "An outside verdict on an endpoint host: red takes it out of rotation in every rule, green and yellow put it back",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["hostName", "state"],
          "properties": {"hostName": {"type": "string"}, "state": {"type": "string", "enum": ["green", "yellow", "red"]}}}}}},
        "responses": {
          "200": {"description": "Success", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "400": {"description": "Bad address or state", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "404": {"description": "No rule has that endpoint host", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/cluster": {
      "get": {
        "summary": "Members (SWIM state, incarnation, last heard, roles), HA instances (role, term, master, VIPs, transitions, takeover times), gossip counters and drops",
        "responses": {
          "200": {"description": "Cluster status", "content": {"application/json": {"schema": {"type": "object"}}}},
          "404": {"description": "Not clustered", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/bgp": {
      "get": {
        "summary": "The node's BGP speaker (BIRD): mode, sessions with their state, announced VIPs, drain state, connections created",
        "responses": {
          "200": {"description": "BGP status", "content": {"application/json": {"schema": {"type": "object"}}}},
          "404": {"description": "No bgp section in the node's config", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/node/drain": {
      "post": {
        "summary": "Withdraw every BGP announcement of this node (drain true, the default) or announce again (drain false)",
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object",
          "properties": {"drain": {"type": "boolean"}}}}}},
        "responses": {
          "200": {"description": "BGP status after the change", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": {"description": "Malformed body", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
          "404": {"description": "No bgp section in the node's config", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}}
        }
      }
    },
    "/netlox/v1/status": {
      "get": {"summary": "Datapath counters", "responses": {"200": {"description": "Counters",
        "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}}
    }
  },
  "components": {
    "schemas": {
      "CIState": {"type": "object", "required": ["instance", "state"], "properties": {
        "instance": {"type": "string", "example": "llb-inst0"},
        "state": {"type": "string", "enum": ["MASTER", "BACKUP"]},
        "vip": {"type": "string", "format": "ipv4", "example": "0.0.0.0"}}},
      "Result": {"type": "object", "required": ["code", "message"],
                 "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
      "ServiceArguments": {
        "type": "object", "required": ["externalIP", "port", "protocol"],
        "properties": {
          "externalIP": {"type": "string", "format": "ipv4"},
          "port": {"type": "integer", "minimum": 1, "maximum": 65535},
          "protocol": {"type": "string", "enum": ["tcp", "udp"]},
          "sel": {"description": "0 rr, 1 hash (Maglev), 2 priority (weighted), 3 persist; or the name",
                  "oneOf": [{"type": "integer"}, {"type": "string"}]},
          "mode": {"description": "0 default, 1 onearm, 2 fullnat; or the name", "oneOf": [{"type": "integer"}, {"type": "string"}]},
          "name": {"type": "string"},
          "snatIP": {"type": "string", "format": "ipv4", "description": "fullnat source; default the externalIP"},
          "persistTimeout": {"type": "integer", "minimum": 1},
          "inactiveTimeOut": {"type": "integer"},
          "block": {"type": "integer"},
          "monitor": {"type": "boolean"},
          "managed": {"type": "boolean"}
        }
      },
      "Endpoint": {
        "type": "object", "required": ["endpointIP", "targetPort"],
        "properties": {
          "endpointIP": {"type": "string", "format": "ipv4"},
          "targetPort": {"type": "integer", "minimum": 1, "maximum": 65535},
          "weight": {"type": "integer", "minimum": 1, "maximum": 255},
          "state": {"type": "string"},
          "counter": {"type": "string"}
        }
      },
      "LoadBalancerEntry": {
        "type": "object", "required": ["serviceArguments", "endpoints"],
        "properties": {
          "serviceArguments": {"$ref": "#/components/schemas/ServiceArguments"},
          "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/Endpoint"}},
          "counters": {"type": "object", "properties": {"packets": {"type": "integer"}, "bytes": {"type": "integer"},
                       "newConnections": {"type": "integer"}, "activeConnections": {"type": "integer"}}}
        }
      },
      "Conntrack": {
        "type": "object",
        "properties": {
          "serviceName": {"type": "string"}, "destinationIP": {"type": "string"}, "sourceIP": {"type": "string"},
          "destinationPort": {"type": "integer"}, "sourcePort": {"type": "integer"}, "protocol": {"type": "string"},
          "conntrackState": {"type": "string"}, "conntrackAct": {"type": "string"},
          "packets": {"type": "integer"}, "bytes": {"type": "integer"}, "learnedFromPeer": {"type": "boolean"}
        }
      }
    }
  }
}
"""#
}
