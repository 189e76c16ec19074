import java.io.File;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * Hadoop's own in-process HDFS (one NameNode, one DataNode) for the cluster tests.
 *
 * Usage: java -cp <minicluster jars>:. MiniHdfs BASE_DIR RPC_PORT HTTP_PORT
 * Prints "READY hdfs://127.0.0.1:RPC http://127.0.0.1:HTTP" once the file system accepts writes,
 * then serves until its standard input closes (the test's process ends) or it is killed.
 */
public final class MiniHdfs {
    public static void main(String[] args) throws Exception {
        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, new File(args[0]).getAbsolutePath());
        // Spark executors and Python readers run as whoever they are: no HDFS permission checks.
        conf.setBoolean("dfs.permissions.enabled", false);
        conf.setBoolean("dfs.webhdfs.enabled", true);
        conf.set("dfs.namenode.http-address", "127.0.0.1:" + args[2]);
        conf.set("dfs.datanode.address", "127.0.0.1:0");
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.setInt("dfs.replication", 1);
        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
            .nameNodePort(Integer.parseInt(args[1]))
            .nameNodeHttpPort(Integer.parseInt(args[2]))
            .numDataNodes(1)
            .format(true)
            .build();
        cluster.waitActive();
        int rpc = cluster.getNameNodePort();
        int http = cluster.getNameNode().getHttpAddress().getPort();
        System.out.println("READY hdfs://127.0.0.1:" + rpc + " http://127.0.0.1:" + http);
        System.out.flush();
        while (System.in.read() != -1) {
            // serve until the parent closes our stdin
        }
        cluster.shutdown();
    }
}
