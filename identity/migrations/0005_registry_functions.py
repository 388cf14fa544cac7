"""The registry's per-socket transactions as PostgreSQL functions: one round trip each.

identity.sql calls them on PostgreSQL; other databases run the same steps
one statement at a time (identity.registry). Each is the whole transaction
of an `auth` or a close: lock the user's UserIdentity row, then count,
insert or delete, so first and last sockets are decided once across
processes, as before. Liveness is the heartbeat rule of identity.registry.live:
a socket counts while its process's heartbeat is at or after the cutoff.
"""

from django.db import migrations, models

REGISTER = """
CREATE OR REPLACE FUNCTION identity_register(
    p_channel varchar, p_user identity_connection.user_id%TYPE,
    p_server varchar, p_opened timestamptz, p_now timestamptz,
    p_addr varchar, p_agent varchar, p_cutoff timestamptz, p_limit integer,
    OUT o_alive integer, OUT o_ghosts integer, OUT o_inserted boolean, OUT o_version bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM identity_useridentity WHERE user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- no identity row: the caller creates it and calls again
    END IF;
    SELECT count(*) FILTER (WHERE s.heartbeat_at >= p_cutoff),
           count(*) FILTER (WHERE s.heartbeat_at < p_cutoff)
      INTO o_alive, o_ghosts
      FROM identity_connection c JOIN identity_serverprocess s ON s.id = c.server_id
     WHERE c.user_id = p_user;
    IF o_ghosts > 0 THEN
        DELETE FROM identity_connection c USING identity_serverprocess s
         WHERE s.id = c.server_id AND c.user_id = p_user AND s.heartbeat_at < p_cutoff;
    END IF;
    o_inserted := p_limit <= 0 OR o_alive < p_limit;
    IF o_inserted THEN
        INSERT INTO identity_connection (channel_name, user_id, server_id, opened_at,
                                         authenticated_at, remote_addr, user_agent)
        VALUES (p_channel, p_user, p_server, p_opened, p_now, p_addr, p_agent);
        IF o_alive = 0 THEN  -- `online` (after `offline` when it replaced ghosts): a version each
            UPDATE identity_useridentity SET presence_version = presence_version + 2
             WHERE user_id = p_user RETURNING presence_version INTO o_version;
        END IF;
    END IF;
END $$;
"""

LEAVE = """
CREATE OR REPLACE FUNCTION identity_leave(
    p_channel varchar, p_user identity_connection.user_id%TYPE,
    p_presence boolean, p_cutoff timestamptz,
    OUT o_last boolean, OUT o_left varchar[], OUT o_version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_held varchar[];
BEGIN
    PERFORM 1 FROM identity_useridentity WHERE user_id = p_user FOR UPDATE;
    o_left := '{}';
    IF p_presence THEN
        WITH gone AS (
            DELETE FROM identity_topicmember WHERE channel_name = p_channel RETURNING topic)
        SELECT array_agg(DISTINCT topic) INTO v_held FROM gone;
        IF v_held IS NOT NULL THEN
            SELECT coalesce(array_agg(t), '{}') INTO o_left  -- sorted by the caller
              FROM unnest(v_held) AS t
             WHERE NOT EXISTS (
                SELECT 1 FROM identity_topicmember m
                  JOIN identity_serverprocess s ON s.id = m.server_id
                 WHERE m.user_id = p_user AND m.topic = t AND s.heartbeat_at >= p_cutoff);
        END IF;
    END IF;
    DELETE FROM identity_connection WHERE channel_name = p_channel;
    o_last := FOUND AND NOT EXISTS (
        SELECT 1 FROM identity_connection c JOIN identity_serverprocess s ON s.id = c.server_id
         WHERE c.user_id = p_user AND s.heartbeat_at >= p_cutoff);
    IF o_last THEN  -- `offline`
        UPDATE identity_useridentity SET presence_version = presence_version + 1
         WHERE user_id = p_user RETURNING presence_version INTO o_version;
    END IF;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS identity_register(
    varchar, identity_connection.user_id%TYPE, varchar, timestamptz, timestamptz,
    varchar, varchar, timestamptz, integer);
DROP FUNCTION IF EXISTS identity_leave(
    varchar, identity_connection.user_id%TYPE, boolean, timestamptz);
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # No parameters, so the % in %TYPE is not read as a placeholder.
        schema_editor.execute(REGISTER, None)
        schema_editor.execute(LEAVE, None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, None)


class Migration(migrations.Migration):
    dependencies = [("identity", "0004_topics")]

    operations = [
        migrations.AddField(
            model_name="useridentity",
            name="presence_version",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddIndex(
            model_name="topicmember",
            index=models.Index(fields=["channel_name"], name="identity_to_channel_e973bc_idx"),
        ),
        migrations.RunPython(create, drop),
    ]
