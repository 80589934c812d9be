-- The provisioner's state store, beside Prefect's own database (run once, at the first start).
CREATE DATABASE scim_state;
