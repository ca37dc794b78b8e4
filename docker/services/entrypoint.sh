#!/bin/sh
# Runs the service this image was built for (/etc/covid-ct-service), in the foreground.
set -eu
service="$(cat /etc/covid-ct-service)"
case "$service" in
postgres)
  : "${POSTGRES_USER:=dicom}" "${POSTGRES_DB:=dicom_node}"
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  data=/var/lib/postgresql/data
  bin=/usr/lib/postgresql/15/bin
  mkdir -p "$data" /run/postgresql && chown -R postgres:postgres "$data" /run/postgresql && chmod 700 "$data"
  if [ ! -s "$data/PG_VERSION" ]; then
    pw="$(mktemp)"; printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"; chown postgres "$pw"
    su postgres -s /bin/sh -c "$bin/initdb -D $data -U $POSTGRES_USER --pwfile=$pw --auth-local=trust --auth-host=scram-sha-256" >/dev/null
    rm -f "$pw"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
    echo "host all all ::/0 scram-sha-256" >> "$data/pg_hba.conf"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D $data -o '-c listen_addresses=' -w start" >/dev/null
    su postgres -s /bin/sh -c "$bin/createdb -U $POSTGRES_USER $POSTGRES_DB"
    su postgres -s /bin/sh -c "$bin/pg_ctl -D $data -m fast -w stop" >/dev/null
  fi
  exec su postgres -s /bin/sh -c "exec $bin/postgres -D $data -c listen_addresses='*' -c config_file=$data/postgresql.conf"
  ;;
rabbitmq)
  : "${RABBITMQ_DEFAULT_USER:=dicom}"
  : "${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS}"
  mkdir -p /etc/rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
  printf 'default_user = %s\ndefault_pass = %s\nloopback_users = none\nlisteners.tcp.default = 5672\n' \
    "$RABBITMQ_DEFAULT_USER" "$RABBITMQ_DEFAULT_PASS" > /etc/rabbitmq/rabbitmq.conf
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
  # Logs to standard output, not files.
  export RABBITMQ_LOGS=-
  exec su rabbitmq -s /bin/sh -c "HOME=/var/lib/rabbitmq RABBITMQ_LOGS=- exec /usr/lib/rabbitmq/bin/rabbitmq-server"
  ;;
redis)
  mkdir -p /var/lib/redis && chown redis:redis /var/lib/redis
  exec su redis -s /bin/sh -c "exec redis-server --bind 0.0.0.0 --protected-mode no --dir /var/lib/redis --appendonly yes ${REDIS_PASSWORD:+--requirepass $REDIS_PASSWORD}"
  ;;
orthanc)
  # A test PACS: DICOM on 4242 (any calling AE may store), REST on 8042 without authentication.
  mkdir -p /var/lib/orthanc/db && chown -R orthanc:orthanc /var/lib/orthanc
  cat > /tmp/orthanc.json <<JSON
{"Name": "${ORTHANC_NAME:-PACS}", "DicomAet": "${ORTHANC_AET:-ORTHANC}", "DicomPort": 4242, "HttpPort": 8042,
 "StorageDirectory": "/var/lib/orthanc/db", "IndexDirectory": "/var/lib/orthanc/db",
 "RemoteAccessAllowed": true, "AuthenticationEnabled": false, "DicomAlwaysAllowStore": true,
 "DicomAlwaysAllowEcho": true, "DicomCheckCalledAet": true, "UnknownSopClassAccepted": true, "Plugins": []}
JSON
  exec su orthanc -s /bin/sh -c "exec Orthanc /tmp/orthanc.json"
  ;;
esac
