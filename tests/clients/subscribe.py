#!/usr/bin/env python3
"""A third-party GraphQL client (PyPI gql, graphql-transport-ws over websockets) for the
integration tests.

usage: subscribe.py URL TOKEN progress INSTANCE_ID   print each installProgress item as a JSON line
       subscribe.py URL TOKEN events COUNT           print COUNT events (any instance) as JSON lines
       subscribe.py URL TOKEN rejected               exit 0 only if the server refuses the token
       subscribe.py URL TOKEN query QUERY            run QUERY over the WebSocket, print the result
       subscribe.py URL TOKEN logs INSTANCE_ID COUNT print COUNT log lines of an instance
       subscribe.py URL TOKEN many COUNT            start COUNT subscriptions on one connection,
                                                    print which the server refused; then end one
                                                    and report whether one more is accepted
"""
import asyncio
import json
import sys

from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

PROGRESS = gql(
    """subscription($id: ID!) {
         installProgress(instanceId: $id) { instanceId status percent bytesDownloaded totalBytes }
       }"""
)
EVENTS = gql("subscription { events { seq type instanceId at payload } }")


def transport(url, token):
    return WebsocketsTransport(
        url=url.replace("http://", "ws://"),
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload={"token": token},
        connect_timeout=10,
        ack_timeout=10,
    )


async def progress(url, token, instance_id):
    async with Client(transport=transport(url, token)) as session:
        async for item in session.subscribe(PROGRESS, variable_values={"id": instance_id}):
            print(json.dumps(item["installProgress"]), flush=True)


async def events(url, token, count):
    async with Client(transport=transport(url, token)) as session:
        print("subscribed", flush=True)
        n = 0
        async for item in session.subscribe(EVENTS):
            print(json.dumps(item["events"]), flush=True)
            n += 1
            if n >= count:
                return


async def logs(url, token, instance_id, count):
    q = gql("subscription($id: ID!) { logs(instanceId: $id) { stream line at } }")
    async with Client(transport=transport(url, token)) as session:
        print("subscribed", flush=True)
        n = 0
        async for item in session.subscribe(q, variable_values={"id": instance_id}):
            print(json.dumps(item["logs"]), flush=True)
            n += 1
            if n >= count:
                return


async def query(url, token, text):
    async with Client(transport=transport(url, token)) as session:
        print(json.dumps(await session.execute(gql(text))), flush=True)


async def many(url, token, count):
    async with Client(transport=transport(url, token)) as session:
        async def one():
            async for _ in session.subscribe(EVENTS):
                pass

        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        await asyncio.sleep(2)
        refused = [t.exception() for t in tasks if t.done()]
        running = [t for t in tasks if not t.done()]
        print(json.dumps({"running": len(running),
                          "refused": [getattr(e, "errors", None) or str(e) for e in refused]}), flush=True)
        running[0].cancel()
        await asyncio.gather(running[0], return_exceptions=True)
        await asyncio.sleep(0.5)
        extra = asyncio.ensure_future(one())
        await asyncio.sleep(2)
        print(json.dumps({"extra": "refused" if extra.done() else "running"}), flush=True)
        for t in running[1:] + [extra]:
            t.cancel()
        await asyncio.gather(*running[1:], extra, return_exceptions=True)


async def rejected(url, token):
    try:
        async with Client(transport=transport(url, token)) as session:
            async for _ in session.subscribe(EVENTS):
                pass
    except Exception as e:  # the server closed the socket: what we want
        print(f"rejected: {type(e).__name__}: {e}", flush=True)
        return 0
    print("accepted a wrong token", flush=True)
    return 1


def main():
    url, token, mode = sys.argv[1:4]
    if mode == "progress":
        asyncio.run(asyncio.wait_for(progress(url, token, sys.argv[4]), 120))
    elif mode == "events":
        asyncio.run(asyncio.wait_for(events(url, token, int(sys.argv[4])), 120))
    elif mode == "logs":
        asyncio.run(asyncio.wait_for(logs(url, token, sys.argv[4], int(sys.argv[5])), 120))
    elif mode == "query":
        asyncio.run(asyncio.wait_for(query(url, token, sys.argv[4]), 60))
    elif mode == "many":
        asyncio.run(asyncio.wait_for(many(url, token, int(sys.argv[4])), 60))
    elif mode == "rejected":
        sys.exit(asyncio.run(asyncio.wait_for(rejected(url, token), 30)))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
