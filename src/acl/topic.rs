//! MQTT topic names and filters (MQTT 3.1.1 §4.7 / 5.0 §4.7): validation and matching.
