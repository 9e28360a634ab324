// Harvest's Java agent: removes Robocode 1.9.3.9's round-start race without changing its source.
//
// In RobotPeer.startRound the battle thread starts the robot (IHostingRobotProxy.startRound)
// and only then enters synchronized(isSleeping) to wait until the robot goes to sleep. A robot
// that reaches its first sleep (and notifies) in between is never heard: the battle thread
// waits out the whole timeout, minutes in lockstep (debug) mode. The agent rewrites that one
// method (with BCEL, which Debian ships) so that the monitor is taken *before* the robot
// starts and released with the method's own synchronized block: the robot cannot take it to
// notify until wait() releases it, so its notify always comes after the wait began.
// The JVM runs with -XX:-BytecodeVerificationRemote: BCEL cannot rebuild the StackMapTable.

import java.io.ByteArrayInputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;

import org.apache.bcel.classfile.ClassParser;
import org.apache.bcel.classfile.JavaClass;
import org.apache.bcel.classfile.Method;
import org.apache.bcel.generic.ALOAD;
import org.apache.bcel.generic.ClassGen;
import org.apache.bcel.generic.ConstantPoolGen;
import org.apache.bcel.generic.INVOKEINTERFACE;
import org.apache.bcel.generic.InstructionFactory;
import org.apache.bcel.generic.InstructionHandle;
import org.apache.bcel.generic.InstructionList;
import org.apache.bcel.generic.MONITORENTER;
import org.apache.bcel.generic.MONITOREXIT;
import org.apache.bcel.generic.MethodGen;
import org.apache.bcel.generic.ObjectType;

public final class HarvestAgent {
    static final String PEER = "net/sf/robocode/battle/peer/RobotPeer";

    public static void premain(String args, Instrumentation instrumentation) {
        instrumentation.addTransformer(new ClassFileTransformer() {
            @Override
            public byte[] transform(ClassLoader loader, String name, Class<?> redefined, ProtectionDomain domain,
                                    byte[] bytes) {
                if (!PEER.equals(name)) return null;
                try {
                    return patch(bytes);
                } catch (Throwable error) {
                    System.err.println("HarvestAgent: could not patch RobotPeer: " + error);
                    error.printStackTrace();
                    return null;
                }
            }
        });
    }

    static byte[] patch(byte[] bytes) throws Exception {
        JavaClass parsed = new ClassParser(new ByteArrayInputStream(bytes), "RobotPeer.class").parse();
        ClassGen peer = new ClassGen(parsed);
        ConstantPoolGen pool = peer.getConstantPool();
        InstructionFactory factory = new InstructionFactory(peer, pool);
        ObjectType sleepingType = new ObjectType("java.util.concurrent.atomic.AtomicBoolean");
        int sites = 0;
        int exits = 0;
        for (Method method : peer.getMethods()) {
            if (!method.getName().equals("startRound") || !method.getSignature().equals("(JI)V")) continue;
            MethodGen generator = new MethodGen(method, peer.getClassName(), pool);
            InstructionList code = generator.getInstructionList();
            for (InstructionHandle handle : code.getInstructionHandles()) {
                if (handle.getInstruction() instanceof INVOKEINTERFACE
                        && ((INVOKEINTERFACE) handle.getInstruction()).getMethodName(pool).equals("startRound")) {
                    // synchronized (isSleeping) from before the robot starts ...
                    InstructionList enter = new InstructionList();
                    enter.append(new ALOAD(0));
                    enter.append(factory.createGetField(peer.getClassName(), "isSleeping", sleepingType));
                    enter.append(new MONITORENTER());
                    code.insert(handle, enter);
                    sites++;
                } else if (handle.getInstruction() instanceof MONITOREXIT) {
                    // ... released with the method's own synchronized block (wait() released both holds)
                    InstructionList exit = new InstructionList();
                    exit.append(new ALOAD(0));
                    exit.append(factory.createGetField(peer.getClassName(), "isSleeping", sleepingType));
                    exit.append(new MONITOREXIT());
                    code.append(handle, exit);
                    exits++;
                }
            }
            generator.removeCodeAttributes();  // the old StackMapTable no longer fits
            generator.setMaxStack();
            generator.setMaxLocals();
            peer.replaceMethod(method, generator.getMethod());
        }
        if (sites != 1 || exits == 0) {
            throw new IllegalStateException("RobotPeer.startRound: expected 1 robot start and a synchronized block, found "
                                            + sites + " and " + exits + " monitor exits");
        }
        return peer.getJavaClass().getBytes();
    }

}
