"""asyncio: a stream server and three concurrent clients in one event loop (epoll selector,
socketpair self-pipe, non-blocking sockets), plus a UDP datagram endpoint."""
import asyncio


async def main():
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for j in range(3):
            writer.write(b"client %d line %d\n" % (i, j))
            await writer.drain()
            replies.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        return replies

    for replies in await asyncio.gather(*(client(i) for i in range(3))):
        print(replies)
    server.close()
    await server.wait_closed()

    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data[::-1], addr)

    class Once(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.set_result(data)

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    there = echo.get_extra_info("sockname")
    me, _ = await loop.create_datagram_endpoint(Once, remote_addr=there)
    me.sendto(b"datagram")
    print(await asyncio.wait_for(got, 10))
    me.close()
    echo.close()


asyncio.run(main())
